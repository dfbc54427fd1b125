//! Session settings: SET / SHOW / RESET with Redshift's names and defaults.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// Settings a session starts with. Unknown names are refused (42704), as in Redshift, unless
/// they contain a dot (custom placeholders, which Postgres drivers sometimes set).
const DEFAULTS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("client_min_messages", "notice"),
    ("datestyle", "ISO, MDY"),
    ("default_transaction_isolation", "serializable"),
    ("default_transaction_read_only", "off"),
    ("enable_case_sensitive_identifier", "off"),
    ("enable_result_cache_for_session", "on"),
    ("extra_float_digits", "0"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("is_superuser", "on"),
    ("lc_messages", "C"),
    ("max_identifier_length", "127"),
    ("query_group", "default"),
    ("search_path", "$user, public"),
    ("server_encoding", "UTF8"),
    ("server_version", "8.0.2"),
    ("server_version_num", "80002"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
    ("transaction_isolation", "serializable"),
    ("transaction_read_only", "off"),
    ("wlm_query_slot_count", "1"),
];

/// Settings that only the server sets.
const READ_ONLY: &[&str] = &[
    "integer_datetimes",
    "is_superuser",
    "max_identifier_length",
    "server_encoding",
    "server_version",
    "server_version_num",
];

#[derive(Debug, Clone)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            values: DEFAULTS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// Maps the names clients use to the canonical setting name.
fn canonical(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "time zone" | "time_zone" => "timezone".to_string(),
        "transaction isolation level" => "transaction_isolation".to_string(),
        "session authorization" => "session_authorization".to_string(),
        _ => lower,
    }
}

impl Settings {
    pub fn get(&self, name: &str) -> Result<String> {
        let name = canonical(name);
        self.values.get(&name).cloned().ok_or_else(|| {
            Error::UndefinedObject(format!("unrecognized configuration parameter \"{name}\""))
        })
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let name = canonical(name);
        if READ_ONLY.contains(&name.as_str()) {
            return Err(Error::InvalidStatement(format!(
                "parameter \"{name}\" cannot be changed"
            )));
        }
        if !self.values.contains_key(&name) && !name.contains('.') {
            return Err(Error::UndefinedObject(format!(
                "unrecognized configuration parameter \"{name}\""
            )));
        }
        let value = validate(&name, value)?;
        self.values.insert(name, value);
        Ok(())
    }

    pub fn reset(&mut self, name: &str) -> Result<()> {
        let name = canonical(name);
        match DEFAULTS.iter().find(|(k, _)| *k == name) {
            Some((_, default)) => {
                self.values.insert(name, default.to_string());
                Ok(())
            }
            None if name.contains('.') => {
                self.values.remove(&name);
                Ok(())
            }
            None => Err(Error::UndefinedObject(format!(
                "unrecognized configuration parameter \"{name}\""
            ))),
        }
    }

    pub fn reset_all(&mut self) {
        *self = Settings::default();
    }

    pub fn all(&self) -> impl Iterator<Item = (&String, &String)> {
        self.values.iter()
    }

    /// The schemas of `search_path`, in order, with `$user` resolved.
    pub fn search_path(&self, user: &str) -> Vec<String> {
        self.values
            .get("search_path")
            .map(|path| {
                path.split(',')
                    .map(|s| s.trim().trim_matches('"').to_string())
                    .filter(|s| !s.is_empty())
                    .map(|s| if s == "$user" { user.to_string() } else { s })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn case_sensitive_identifiers(&self) -> bool {
        self.values
            .get("enable_case_sensitive_identifier")
            .is_some_and(|v| is_true(v))
    }
}

fn is_true(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "on" | "true" | "1" | "yes"
    )
}

fn validate(name: &str, value: &str) -> Result<String> {
    match name {
        "enable_case_sensitive_identifier"
        | "enable_result_cache_for_session"
        | "standard_conforming_strings" => match value.to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => Ok("on".to_string()),
            "off" | "false" | "0" | "no" => Ok("off".to_string()),
            _ => Err(Error::InvalidParameterValue(format!(
                "parameter \"{name}\" requires a Boolean value"
            ))),
        },
        "statement_timeout" | "extra_float_digits" | "wlm_query_slot_count" => {
            value.parse::<i64>().map(|v| v.to_string()).map_err(|_| {
                Error::InvalidParameterValue(format!(
                    "invalid value for parameter \"{name}\": \"{value}\""
                ))
            })
        }
        "timezone" if value.eq_ignore_ascii_case("utc") || value.eq_ignore_ascii_case("gmt") => {
            Ok("UTC".to_string())
        }
        _ => Ok(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_show_reset() {
        let mut settings = Settings::default();
        settings.set("search_path", "sales, public").unwrap();
        assert_eq!(settings.search_path("admin"), vec!["sales", "public"]);
        settings.reset("search_path").unwrap();
        assert_eq!(settings.search_path("admin"), vec!["admin", "public"]);
        assert_eq!(
            settings.get("TRANSACTION ISOLATION LEVEL").unwrap(),
            "serializable"
        );
        assert!(settings.set("no_such_thing", "1").is_err());
        assert!(settings.set("server_version", "9").is_err());
        assert!(
            settings
                .set("enable_case_sensitive_identifier", "maybe")
                .is_err()
        );
        settings
            .set("enable_case_sensitive_identifier", "true")
            .unwrap();
        assert!(settings.case_sensitive_identifiers());
        settings.set("myapp.flag", "x").unwrap();
        assert_eq!(settings.get("myapp.flag").unwrap(), "x");
    }
}
