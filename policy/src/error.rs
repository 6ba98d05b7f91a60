//! The crate's one error type: problems in a policy file, each located at `file:line`.

use std::fmt;

/// One problem found in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssue {
    /// The file name as given to [`crate::Policy::parse`].
    pub file: String,
    /// 1-based line number, when the problem could be located.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl PolicyIssue {
    /// `file:line` (or just `file`) — the location prefix used in messages.
    pub fn location(&self) -> String {
        match self.line {
            Some(line) => format!("{}:{}", self.file, line),
            None => self.file.clone(),
        }
    }
}

impl fmt::Display for PolicyIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}

/// Errors of this crate. Policy files report every problem found, not only the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy file is invalid; every problem is listed (at least one).
    #[error("{}", display_issues(.0))]
    Invalid(Vec<PolicyIssue>),
}

impl PolicyError {
    /// Every problem, in file order.
    pub fn issues(&self) -> &[PolicyIssue] {
        match self {
            PolicyError::Invalid(issues) => issues,
        }
    }
}

fn display_issues(issues: &[PolicyIssue]) -> String {
    let mut out = String::new();
    for (i, issue) in issues.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&issue.to_string());
    }
    out
}
