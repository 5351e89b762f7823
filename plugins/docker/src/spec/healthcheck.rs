//! The `healthcheck` of a Docker instance's config and the engine's health config
//! made from it.

use serde::{Deserialize, Serialize};

use super::SpecError;

/// A container health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthcheckSpec {
    /// A shell command (`"curl -f localhost"`), or `["CMD", ...]`, `["CMD-SHELL", "..."]`
    /// or `["NONE"]` as Docker takes it.
    pub test: HealthTest,
    /// Seconds between checks.
    #[serde(default = "default_interval")]
    pub interval: f64,
    /// Seconds a check may take.
    #[serde(default = "default_interval")]
    pub timeout: f64,
    /// Failures in a row that make the instance unhealthy.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Seconds after start during which failures do not count.
    #[serde(default)]
    pub start_period: f64,
}

/// The test of a health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HealthTest {
    /// Run by the container's shell.
    Shell(String),
    /// Docker's form.
    Exec(Vec<String>),
}

fn default_interval() -> f64 {
    30.0
}
fn default_retries() -> u32 {
    3
}

impl HealthcheckSpec {
    /// The engine's health config.
    pub fn to_engine(&self) -> Result<bollard::models::HealthConfig, SpecError> {
        let invalid = |message: String| SpecError::Invalid {
            field: "healthcheck",
            message,
        };
        let test = match &self.test {
            HealthTest::Shell(cmd) if !cmd.trim().is_empty() => {
                vec!["CMD-SHELL".to_owned(), cmd.clone()]
            }
            HealthTest::Exec(v)
                if matches!(v.first().map(String::as_str), Some("CMD" | "CMD-SHELL"))
                    && v.len() > 1 =>
            {
                v.clone()
            }
            HealthTest::Exec(v) if v.len() == 1 && v[0] == "NONE" => v.clone(),
            _ => return Err(invalid("test must be a command".to_owned())),
        };
        let ns = |secs: f64, what: &str| {
            if secs.is_finite() && (0.0..=86_400.0).contains(&secs) {
                Ok((secs * 1e9) as i64)
            } else {
                Err(invalid(format!(
                    "{what} must be between 0 and 86400 seconds"
                )))
            }
        };
        let interval = ns(self.interval, "interval")?;
        let timeout = ns(self.timeout, "timeout")?;
        if interval < 1_000_000 || timeout < 1_000_000 {
            return Err(invalid(
                "interval and timeout must be at least 1 ms".to_owned(),
            ));
        }
        Ok(bollard::models::HealthConfig {
            test: Some(test),
            interval: Some(interval),
            timeout: Some(timeout),
            retries: Some(i64::from(self.retries)),
            start_period: Some(ns(self.start_period, "startPeriod")?),
            ..Default::default()
        })
    }
}
