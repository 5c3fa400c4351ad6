//! AWS: credentials found (environment, shared files, a profile, SSO), `aws
//! sts get-caller-identity` answering within the timeout (account and ARN),
//! and a region set. Not checked for the sandbox.

use std::path::PathBuf;
use std::time::Instant;

use crate::checks::{not_quick, stamp};
use crate::env::Env;
use crate::{Category, CategoryReport, Check, Severity};

/// Where the credentials were found, as the CLI would look.
struct Source {
    /// Said to the user: `environment (AWS_ACCESS_KEY_ID)`, `profile dev (SSO)`.
    describe: String,
    /// The profile in use, for fixes (`aws sso login --profile dev`).
    profile: String,
}

pub(crate) async fn check(env: &Env<'_>) -> CategoryReport {
    if env.sandbox_config() {
        return CategoryReport::skipped(Category::Aws, "not checked: the sandbox needs no AWS");
    }
    if env.options.quick {
        return not_quick(Category::Aws);
    }
    let started = Instant::now();
    let files = Files::read(env);
    let source = credentials(env, &files);
    let blocks = env.options.services;
    let mut checks = Vec::new();
    let found = match &source {
        Ok(source) => {
            checks.push(Check::ok("credentials", source.describe.clone()));
            true
        }
        Err(check) => {
            checks.push(check.as_ref().clone());
            false
        }
    };
    let (region_check, region) = region(env, &files);
    checks.push(region_check);
    let identity = match (&source, env.which("aws")) {
        (Ok(source), Some(aws)) => {
            // STS answers in every region; the AWS CLI v1 reads only AWS_DEFAULT_REGION.
            let region = region.as_deref().unwrap_or("us-east-1");
            stamp(caller_identity(env, &aws, source, region, blocks)).await
        }
        (Ok(_), None) => Check::skip("identity", "not checked: `aws` is not installed (see Tools)"),
        (Err(_), _) => Check::skip("identity", "not checked: no credentials"),
    };
    let summary = if identity.severity == Severity::Ok {
        identity.message.clone()
    } else if found {
        checks[0].message.clone()
    } else {
        "no credentials".to_string()
    };
    checks.push(identity);
    let checks = checks
        .into_iter()
        .map(|c| if c.elapsed.is_zero() { c.took(started.elapsed()) } else { c })
        .collect();
    CategoryReport::new(Category::Aws, summary, checks)
}

/// The shared config and credentials files, parsed as INI.
struct Files {
    config_path: PathBuf,
    config: Vec<(String, Vec<(String, String)>)>,
    credentials_path: PathBuf,
    credentials: Vec<(String, Vec<(String, String)>)>,
}

impl Files {
    fn read(env: &Env<'_>) -> Files {
        let home = env.home().unwrap_or_default();
        let config_path = env
            .child_var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/config"));
        let credentials_path = env
            .child_var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/credentials"));
        let read =
            |p: &PathBuf| std::fs::read_to_string(p).map(|t| parse_ini(&t)).unwrap_or_default();
        Files {
            config: read(&config_path),
            credentials: read(&credentials_path),
            config_path,
            credentials_path,
        }
    }

    /// A profile's settings: `[profile NAME]` (or `[default]`) of the config file.
    fn config_section(&self, profile: &str) -> Option<&Vec<(String, String)>> {
        let wanted =
            if profile == "default" { "default".to_string() } else { format!("profile {profile}") };
        self.config
            .iter()
            .find(|(name, _)| {
                *name == wanted || (profile == "default" && name == "profile default")
            })
            .map(|(_, kv)| kv)
    }

    fn credentials_section(&self, profile: &str) -> Option<&Vec<(String, String)>> {
        self.credentials.iter().find(|(name, _)| name == profile).map(|(_, kv)| kv)
    }
}

fn get<'a>(section: Option<&'a Vec<(String, String)>>, key: &str) -> Option<&'a str> {
    section?.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// Finds credentials the way the CLI does, without calling anyone.
fn credentials(env: &Env<'_>, files: &Files) -> Result<Source, Box<Check>> {
    let named = env.child_var("AWS_PROFILE").or(env.child_var("AWS_DEFAULT_PROFILE"));
    let profile = named.unwrap_or("default").to_string();
    if env.child_var("AWS_ACCESS_KEY_ID").is_some() {
        if env.child_var("AWS_SECRET_ACCESS_KEY").is_none() {
            return Err(Box::new(Check::fail(
                "credentials",
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
                "export AWS_SECRET_ACCESS_KEY too, or unset AWS_ACCESS_KEY_ID to use a profile",
            )));
        }
        return Ok(Source { describe: "environment (AWS_ACCESS_KEY_ID)".into(), profile });
    }
    if env.child_var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
        return Ok(Source {
            describe: "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)".into(),
            profile,
        });
    }
    if env.child_var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env.child_var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
    {
        return Ok(Source { describe: "container credentials".into(), profile });
    }
    let config = files.config_section(&profile);
    let creds = files.credentials_section(&profile);
    let kind = if get(creds, "aws_access_key_id").is_some() {
        Some(format!("keys in {}", files.credentials_path.display()))
    } else if get(config, "aws_access_key_id").is_some() {
        Some(format!("keys in {}", files.config_path.display()))
    } else if get(config, "sso_session").is_some() || get(config, "sso_start_url").is_some() {
        Some("SSO".to_string())
    } else if get(config, "credential_process").is_some() {
        Some("credential_process".to_string())
    } else if get(config, "role_arn").is_some() {
        Some("assumed role".to_string())
    } else {
        None
    };
    if let Some(kind) = kind {
        return Ok(Source { describe: format!("profile {profile} ({kind})"), profile });
    }
    let blocks = env.options.services;
    let (message, fix) = match named {
        Some(name) => (
            format!("AWS_PROFILE={name}, but no profile `{name}` with credentials in {} or {}", files.config_path.display(), files.credentials_path.display()),
            format!("`aws configure --profile {name}` (or `aws configure sso --profile {name}`), or fix AWS_PROFILE"),
        ),
        None => (
            "no AWS credentials: none in the environment, no default profile in ~/.aws".to_string(),
            "`aws configure` (keys) or `aws configure sso` (SSO), or export AWS_PROFILE=<your profile>".to_string(),
        ),
    };
    // FIXME: an EC2 instance role is not detected (that needs a call to the
    // instance metadata service); on an EC2 dev box this reports missing credentials.
    Err(Box::new(Check::problem(blocks, "credentials", message, fix)))
}

/// The region the services' SDK would use, and where it came from.
fn region(env: &Env<'_>, files: &Files) -> (Check, Option<String>) {
    for var in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Some(region) = env.child_var(var) {
            return (Check::ok("region", format!("{region} (from {var})")), Some(region.into()));
        }
    }
    let profile = env.child_var("AWS_PROFILE").unwrap_or("default");
    if let Some(region) = get(files.config_section(profile), "region") {
        let check = Check::ok("region", format!("{region} (from profile {profile})"));
        return (check, Some(region.into()));
    }
    let check = Check::warn(
        "region",
        "no AWS region set: AWS calls by the services will fail",
        format!("export AWS_REGION=us-east-1 (your region), or `aws configure set region <region> --profile {profile}`"),
    );
    (check, None)
}

async fn caller_identity(
    env: &Env<'_>,
    aws: &std::path::Path,
    source: &Source,
    region: &str,
    blocks: bool,
) -> Check {
    let args = ["sts", "get-caller-identity", "--output", "json", "--region", region];
    let out = match env.run(aws, &args, env.options.timeout).await {
        Ok(out) => out,
        Err(e) => {
            let message = format!("`aws sts get-caller-identity`: {e}");
            let fix =
                "check your network, proxy or VPN (STS must be reachable), then run it by hand";
            return Check::problem(blocks, "identity", message, fix);
        }
    };
    if out.success {
        let parsed: Option<serde_json::Value> = serde_json::from_str(&out.stdout).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string()
        };
        return Check::ok("identity", format!("account {}, {}", field("Account"), field("Arn")));
    }
    let detail =
        out.stderr.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("").to_string();
    let profile = &source.profile;
    let fix = if detail.contains("expired")
        || detail.contains("Expired")
        || detail.contains("SSO")
        || detail.contains("sso")
    {
        format!("log in again: `aws sso login --profile {profile}` (or refresh your keys)")
    } else if detail.contains("InvalidClientTokenId") || detail.contains("SignatureDoesNotMatch") {
        "the access key is wrong or deactivated: create a new one, then `aws configure`".to_string()
    } else {
        "run `aws sts get-caller-identity` by hand to see the whole error".to_string()
    };
    Check::problem(
        blocks,
        "identity",
        format!("`aws sts get-caller-identity` failed: {detail}"),
        fix,
    )
}

/// `[section]` headers and `key = value` lines; comments and blank lines skipped.
fn parse_ini(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.trim().to_string(), Vec::new()));
        } else if let (Some((key, value)), Some(section)) =
            (line.split_once('='), sections.last_mut())
        {
            section.1.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_and_keys_are_read() {
        let text = "# c\n[default]\nregion = eu-west-1\n[profile dev]\nsso_session=corp\n";
        let parsed = parse_ini(text);
        assert_eq!(parsed[0].0, "default");
        assert_eq!(parsed[0].1, vec![("region".to_string(), "eu-west-1".to_string())]);
        assert_eq!(parsed[1].0, "profile dev");
    }
}
