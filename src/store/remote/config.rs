//! Where a remote is and how to sign for it: the `s3://bucket/prefix` URL from the
//! pipeline or `--remote`, and the endpoint and credentials from the standard AWS
//! environment variables or profile files — never from the pipeline file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl RemoteUrl {
    /// Parse `s3://bucket[/prefix]`; the error says what is wrong in words.
    pub fn parse(text: &str) -> Result<RemoteUrl, String> {
        let rest = text.strip_prefix("s3://").ok_or_else(|| {
            format!("remote `{text}` is not an s3:// URL (expected s3://bucket/prefix)")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("remote `{text}` names no bucket"));
        }
        if bucket.contains('@') || bucket.contains(':') {
            return Err(
                "a remote URL must not hold credentials or a port: set AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL (or a profile) instead"
                    .to_string(),
            );
        }
        if text.contains(['?', '#']) {
            return Err(format!("remote `{text}` has a query or fragment; drop it"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == "." || part == "..") {
            return Err(format!(
                "remote `{text}`: `.` and `..` are not allowed in the prefix"
            ));
        }
        Ok(RemoteUrl {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// What signing and reaching the remote takes, resolved from the environment
/// first, then the profile (`AWS_PROFILE`, else `default`).
#[derive(Clone, Default)]
pub struct AwsSettings {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// `AWS_ALLOW_HTTP=true`: plain http to a host other than loopback.
    pub allow_http: bool,
    /// `AWS_SKIP_SIGNATURE=true`: anonymous access to a public bucket.
    pub skip_signature: bool,
}

// Never print the secrets, even in a debug dump.
impl std::fmt::Debug for AwsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSettings")
            .field("has_credentials", &self.access_key_id.is_some())
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl AwsSettings {
    /// Resolve from this process's environment and the profile files it names.
    pub fn from_env() -> AwsSettings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from);
        let aws_dir = |file: &str| home.as_ref().map(|h| h.join(".aws").join(file));
        let credentials = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| aws_dir("credentials"));
        let config = var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| aws_dir("config"));
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let from_files = Profile::load(credentials.as_deref(), config.as_deref(), &profile);
        AwsSettings::resolve(&var, &from_files)
    }

    /// Environment variables win over the profile, key by key.
    fn resolve(var: &dyn Fn(&str) -> Option<String>, profile: &Profile) -> AwsSettings {
        let pick = |env: &[&str], key: &str| {
            env.iter()
                .find_map(|name| var(name))
                .or_else(|| profile.get(key))
        };
        let truthy =
            |name: &str| var(name).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        AwsSettings {
            access_key_id: pick(&["AWS_ACCESS_KEY_ID"], "aws_access_key_id"),
            secret_access_key: pick(&["AWS_SECRET_ACCESS_KEY"], "aws_secret_access_key"),
            session_token: pick(&["AWS_SESSION_TOKEN"], "aws_session_token"),
            region: pick(&["AWS_REGION", "AWS_DEFAULT_REGION"], "region"),
            endpoint: pick(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"], "endpoint_url"),
            allow_http: truthy("AWS_ALLOW_HTTP"),
            skip_signature: truthy("AWS_SKIP_SIGNATURE"),
        }
    }

    /// The strings that must never reach a log, a key, an artifact or `--json`.
    pub fn secrets(&self) -> Vec<String> {
        [
            &self.access_key_id,
            &self.secret_access_key,
            &self.session_token,
        ]
        .into_iter()
        .flatten()
        .filter(|s| s.len() >= 4)
        .cloned()
        .collect()
    }

    /// Plain http is for loopback only, unless `AWS_ALLOW_HTTP=true`. Returns
    /// whether the client must be allowed http.
    pub fn check_endpoint(&self) -> Result<bool, String> {
        let Some(endpoint) = &self.endpoint else {
            return Ok(false);
        };
        let Some(rest) = endpoint.strip_prefix("http://") else {
            if endpoint.starts_with("https://") {
                return Ok(false);
            }
            return Err(format!(
                "AWS_ENDPOINT_URL `{endpoint}` must start with https:// (or http:// for a loopback address)"
            ));
        };
        if rest.contains('@') {
            return Err("AWS_ENDPOINT_URL must not hold credentials".to_string());
        }
        if is_loopback(rest) || self.allow_http {
            return Ok(true);
        }
        Err(format!(
            "AWS_ENDPOINT_URL `{endpoint}` is plain http to a host that is not loopback; \
             use https, or set AWS_ALLOW_HTTP=true to send artifacts unencrypted"
        ))
    }
}

/// Whether `host[:port][/path]` names this machine.
fn is_loopback(authority_and_path: &str) -> bool {
    let authority = authority_and_path
        .split('/')
        .next()
        .unwrap_or(authority_and_path);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One profile's keys from the AWS credentials and config files (INI).
#[derive(Debug, Default)]
struct Profile {
    values: BTreeMap<String, String>,
}

impl Profile {
    fn load(credentials: Option<&Path>, config: Option<&Path>, name: &str) -> Profile {
        let read = |p: Option<&Path>| p.and_then(|p| std::fs::read_to_string(p).ok());
        let mut profile = Profile::default();
        // The config file names sections `[profile NAME]`, except `[default]`.
        let config_section = if name == "default" {
            "default".to_string()
        } else {
            format!("profile {name}")
        };
        if let Some(text) = read(config) {
            profile.values.extend(ini_section(&text, &config_section));
        }
        // The credentials file wins where both say something.
        if let Some(text) = read(credentials) {
            profile.values.extend(ini_section(&text, name));
        }
        profile
    }

    fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).filter(|v| !v.is_empty()).cloned()
    }
}

/// The `key = value` pairs of section `[name]` (keys lower-cased).
fn ini_section(text: &str, name: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == name;
            continue;
        }
        if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            values.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_reject_credentials() {
        let url = RemoteUrl::parse("s3://team-cache/xtr/v1/").unwrap();
        assert_eq!(url.bucket, "team-cache");
        assert_eq!(url.prefix, "xtr/v1");
        assert_eq!(url.to_string(), "s3://team-cache/xtr/v1");
        assert_eq!(RemoteUrl::parse("s3://b").unwrap().prefix, "");
        for bad in [
            "http://b/p",
            "s3://",
            "s3:///p",
            "s3://key:secret@b/p",
            "s3://b/../p",
        ] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn environment_wins_over_the_profile() {
        let files = "[default]\naws_access_key_id = FROMFILE\naws_secret_access_key = filesecret\n\
                     [other]\naws_access_key_id = OTHER\n";
        let profile = Profile {
            values: ini_section(files, "default"),
        };
        let env = |name: &str| (name == "AWS_ACCESS_KEY_ID").then(|| "FROMENV".to_string());
        let s = AwsSettings::resolve(&env, &profile);
        assert_eq!(s.access_key_id.as_deref(), Some("FROMENV"));
        assert_eq!(s.secret_access_key.as_deref(), Some("filesecret"));
        assert!(!format!("{s:?}").contains("filesecret"));
    }

    #[test]
    fn profiles_come_from_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[team]\naws_access_key_id = K\naws_secret_access_key = S\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[profile team]\nregion = garage\nendpoint_url = http://127.0.0.1:3900\n",
        )
        .unwrap();
        let p = Profile::load(Some(&creds), Some(&config), "team");
        assert_eq!(p.get("aws_access_key_id").as_deref(), Some("K"));
        assert_eq!(p.get("region").as_deref(), Some("garage"));
        assert_eq!(
            p.get("endpoint_url").as_deref(),
            Some("http://127.0.0.1:3900")
        );
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let with = |endpoint: &str, allow_http: bool| AwsSettings {
            endpoint: Some(endpoint.to_string()),
            allow_http,
            ..AwsSettings::default()
        };
        for ok in [
            "http://127.0.0.1:3900",
            "http://localhost:9000/",
            "http://[::1]:3900",
        ] {
            assert_eq!(with(ok, false).check_endpoint(), Ok(true), "{ok}");
        }
        assert_eq!(
            with("https://s3.example.org", false).check_endpoint(),
            Ok(false)
        );
        let err = with("http://10.0.0.5:3900", false)
            .check_endpoint()
            .unwrap_err();
        assert!(err.contains("AWS_ALLOW_HTTP"), "{err}");
        assert_eq!(
            with("http://10.0.0.5:3900", true).check_endpoint(),
            Ok(true)
        );
        assert!(with("ftp://x", false).check_endpoint().is_err());
    }
}
