//! Application Default Credentials discovery, from an explicit [`AdcEnv`]
//! so callers (and tests) decide what the environment is.

use std::path::PathBuf;

use super::{SourceCredential, DEFAULT_METADATA_HOST};
use crate::google::CredentialError;

/// The environment ADC discovery looks at, captured once by the caller
/// (tests build one by hand instead of changing the process environment).
#[derive(Debug, Clone, Default)]
pub struct AdcEnv {
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    pub google_application_credentials: Option<PathBuf>,
    /// `CLOUDSDK_CONFIG`: gcloud's configuration directory.
    pub cloudsdk_config: Option<PathBuf>,
    /// The home directory (`HOME`).
    pub home: Option<PathBuf>,
    /// `GCE_METADATA_HOST`: `host[:port]` of the metadata server.
    pub gce_metadata_host: Option<String>,
}

impl AdcEnv {
    /// Reads the variables from the process environment.
    pub fn from_process() -> AdcEnv {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        AdcEnv {
            google_application_credentials: var("GOOGLE_APPLICATION_CREDENTIALS")
                .map(PathBuf::from),
            cloudsdk_config: var("CLOUDSDK_CONFIG").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
            gce_metadata_host: var("GCE_METADATA_HOST").and_then(|v| v.into_string().ok()),
        }
    }

    pub(super) fn metadata_host(&self) -> String {
        self.gce_metadata_host
            .clone()
            .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned())
    }

    /// gcloud's `application_default_credentials.json`.
    fn gcloud_adc_file(&self) -> Option<PathBuf> {
        let dir = match (&self.cloudsdk_config, &self.home) {
            (Some(dir), _) => dir.clone(),
            (None, Some(home)) => home.join(".config").join("gcloud"),
            (None, None) => return None,
        };
        Some(dir.join("application_default_credentials.json"))
    }
}

impl SourceCredential {
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`,
    /// then gcloud's ADC file, then the metadata server.
    pub fn discover(env: &AdcEnv) -> Result<SourceCredential, CredentialError> {
        if let Some(path) = &env.google_application_credentials {
            // Set but unreadable is an error, as in Google's libraries: the
            // user asked for this file.
            return Self::from_file(path);
        }
        if let Some(path) = env.gcloud_adc_file() {
            if path.is_file() {
                return Self::from_file(&path);
            }
        }
        if env.gce_metadata_host.is_some() || env.home.is_none() || on_gce() {
            return Ok(SourceCredential::Metadata {
                host: env.metadata_host(),
            });
        }
        Err(CredentialError::NoCredentials {
            tried: format!(
                "GOOGLE_APPLICATION_CREDENTIALS (unset), {} (missing), GCE_METADATA_HOST (unset, not on GCE)",
                env.gcloud_adc_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "gcloud ADC file".to_owned())
            ),
        })
    }
}

/// Whether this looks like a Google Compute Engine VM (the DMI product
/// name), so ADC falls back to the metadata server only where one exists.
fn on_gce() -> bool {
    std::fs::read_to_string("/sys/class/dmi/id/product_name")
        .map(|s| s.trim().starts_with("Google"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::source::test_files::{tmp, write};

    #[test]
    fn adc_prefers_the_env_file_then_gcloud_then_metadata() {
        let dir = tmp("adc");
        let au =
            r#"{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r"}"#;
        let gcloud = dir.join("gcloud");
        write(&gcloud, "application_default_credentials.json", au);
        let env = AdcEnv {
            cloudsdk_config: Some(gcloud.clone()),
            home: Some(dir.to_path_buf()),
            ..AdcEnv::default()
        };
        assert_eq!(
            SourceCredential::discover(&env).unwrap().kind_name(),
            "authorized_user"
        );

        let imp = format!(
            r#"{{"type":"impersonated_service_account","service_account_impersonation_url":"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/mid@p.iam.gserviceaccount.com:generateAccessToken","delegates":["projects/-/serviceAccounts/d@p.iam.gserviceaccount.com"],"source_credentials":{au}}}"#
        );
        let env2 = AdcEnv {
            google_application_credentials: Some(write(&dir, "imp.json", &imp)),
            ..env.clone()
        };
        match SourceCredential::discover(&env2).unwrap() {
            SourceCredential::Impersonated {
                source,
                target,
                delegates,
            } => {
                assert_eq!(target, "mid@p.iam.gserviceaccount.com");
                assert_eq!(delegates, vec!["d@p.iam.gserviceaccount.com".to_owned()]);
                assert_eq!(source.kind_name(), "authorized_user");
            }
            other => panic!("{other:?}"),
        }

        let env3 = AdcEnv {
            cloudsdk_config: Some(dir.join("nowhere")),
            gce_metadata_host: Some("127.0.0.1:1".into()),
            ..env.clone()
        };
        assert!(matches!(
            SourceCredential::discover(&env3).unwrap(),
            SourceCredential::Metadata { host } if host == "127.0.0.1:1"
        ));

        let missing = AdcEnv {
            google_application_credentials: Some(dir.join("absent.json")),
            ..env
        };
        let err = SourceCredential::discover(&missing).unwrap_err();
        assert!(err.to_string().contains("absent.json"), "{err}");
    }
}
