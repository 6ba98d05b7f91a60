//! Fuzz policy-file parsing and `check`: never panic; every error is located and actionable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcloak_policy::{check, check_text, Class, Policy, StorageTypes};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse(text, "fuzz.toml") {
        Ok(p) => {
            let mut storage = StorageTypes::new();
            for (i, c) in p.columns().iter().enumerate() {
                let t = ["bytea", "text", "integer", "character varying(10)"][i % 4];
                storage.insert(c.qualified_name(), t.to_string());
            }
            let _ = check(&p, Some(&storage));
            let names: Vec<&str> = p.roles().iter().map(|r| r.name.as_str()).collect();
            let role = p.role_for(&names);
            for class in Class::ALL {
                let _ = role.read(class);
                let _ = role.may_write(class);
            }
        }
        Err(e) => {
            assert!(!e.issues().is_empty());
            for issue in e.issues() {
                assert!(issue.to_string().starts_with("fuzz.toml"));
            }
        }
    }
    let _ = check_text(text, "fuzz.toml", None);
});
