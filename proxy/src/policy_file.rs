//! Loading the configured policy file: used when the proxy starts, on every reload, and by the
//! `keys` and `migrate` commands.

use pgcloak_policy::Policy;

use crate::config::Config;

/// The configured policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("cannot read policy file {file}: {cause}")]
    Read {
        file: String,
        #[source]
        cause: std::io::Error,
    },
    /// It does not parse or check (the error names the file, line and fix).
    #[error(transparent)]
    Invalid(#[from] pgcloak_policy::PolicyError),
}

/// Loads and parses the configured policy; no policy file means an empty policy (nothing protected).
pub fn load_policy(config: &Config) -> Result<Policy, PolicyLoadError> {
    match &config.policy {
        None => Ok(Policy::parse("", "(no policy)")?),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|cause| PolicyLoadError::Read {
                file: p.display().to_string(),
                cause,
            })?;
            Ok(Policy::parse(&text, &p.display().to_string())?)
        }
    }
}
