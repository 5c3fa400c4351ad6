//! The variables this tool understands: names, older aliases, defaults, and
//! which ones are secrets.

/// How a variable's value is checked and normalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Host,
    Port,
    Path,
    Bool,
    Seconds,
    Count,
    Endpoint,
    Forwards,
    BindAddress,
    Environment,
}

/// One documented variable.
#[derive(Debug)]
pub struct VarSpec {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub default: Option<&'static str>,
    pub kind: Kind,
    pub secret: bool,
    pub help: &'static str,
}

const fn var(name: &'static str, kind: Kind, help: &'static str) -> VarSpec {
    VarSpec { name, aliases: &[], default: None, kind, secret: false, help }
}

impl VarSpec {
    const fn alias(mut self, aliases: &'static [&'static str]) -> Self {
        self.aliases = aliases;
        self
    }

    const fn default(mut self, value: &'static str) -> Self {
        self.default = Some(value);
        self
    }

    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }
}

/// Every variable, in the order `cargo xtask env` shows them.
pub static VARS: &[VarSpec] = &[
    var("BASTION_HOST_IP", Kind::Host, "bastion address or ~/.ssh/config Host alias")
        .alias(&["NAT_INSTANCE_IP"]),
    var("BASTION_PORT", Kind::Port, "bastion SSH port").default("22"),
    var("BASTION_USER", Kind::Text, "bastion SSH user").default("ec2-user"),
    var("BASTION_KEY_FILE", Kind::Path, "private key, tried before the agent")
        .alias(&["SSH_KEY_PATH"]),
    var("BASTION_KEY_PASSPHRASE", Kind::Text, "passphrase of an encrypted key").secret(),
    var("BASTION_KNOWN_HOSTS", Kind::Path, "known_hosts file used to verify the bastion")
        .default("~/.ssh/known_hosts"),
    var("ELASTICACHE_ENDPOINT", Kind::Endpoint, "Redis endpoint inside the VPC")
        .alias(&["REDIS_HOST"]),
    var("REDIS_TUNNEL_PORT", Kind::Port, "local port of the Redis forward").default("6379"),
    var("REDIS_USERNAME", Kind::Text, "Redis ACL user"),
    var("REDIS_PASSWORD", Kind::Text, "Redis password or auth token").secret(),
    var("REDIS_TLS_ENABLED", Kind::Bool, "speak TLS to Redis").default("false"),
    var("REDIS_CA_CERT", Kind::Path, "PEM file of the CA that signed the Redis certificate"),
    var("USE_SSH_TUNNEL_FOR_REDIS", Kind::Bool, "reach Redis through the bastion"),
    var("RDS_ENDPOINT", Kind::Endpoint, "Postgres endpoint inside the VPC"),
    var("RDS_TUNNEL_PORT", Kind::Port, "local port of the Postgres forward").default("5432"),
    var("TUNNEL_EXTRA_FORWARDS", Kind::Forwards, "more forwards, LOCAL:HOST:PORT,..."),
    var("TUNNEL_BIND_ADDRESS", Kind::BindAddress, "address the forwards listen on")
        .default("127.0.0.1"),
    var("TUNNEL_KEEPALIVE_INTERVAL", Kind::Seconds, "seconds between keepalives").default("15"),
    var("TUNNEL_KEEPALIVE_COUNT", Kind::Count, "unanswered keepalives before reconnecting")
        .default("3"),
    var("TUNNEL_CONNECT_TIMEOUT", Kind::Seconds, "seconds to connect and log in to the bastion")
        .default("15"),
    var("ENVIRONMENT", Kind::Environment, "development, test, docker or production")
        .default("development"),
    var("MESH_ROOT", Kind::Path, "checkout of the platform, for the service manifest"),
    var("XTASK_STATE_DIR", Kind::Path, "root of the tunnel state (pid, log, socket)"),
    var("AWS_PROFILE", Kind::Text, "AWS CLI profile"),
    var("AWS_REGION", Kind::Text, "AWS region").alias(&["AWS_DEFAULT_REGION"]),
    var("AWS_ACCESS_KEY_ID", Kind::Text, "AWS access key id").secret(),
    var("AWS_SECRET_ACCESS_KEY", Kind::Text, "AWS secret access key").secret(),
    var("AWS_SESSION_TOKEN", Kind::Text, "AWS session token").secret(),
];

/// The spec of a canonical name or an alias.
pub fn lookup(name: &str) -> Option<&'static VarSpec> {
    VARS.iter().find(|v| v.name == name || v.aliases.contains(&name))
}

/// Whether a variable holds a secret: a documented one by its spec; another when
/// its name is a near miss of a secret's (`REDIS_PASWORD`, `redis_password`) or
/// contains PASSWORD, SECRET, TOKEN, PASSPHRASE, AUTH or KEY (not a key's file or
/// path, `*_KEY_FILE`, `*_PATH`).
pub fn looks_secret(name: &str) -> bool {
    if let Some(spec) = lookup(name) {
        return spec.secret;
    }
    if did_you_mean(name).and_then(lookup).is_some_and(|spec| spec.secret) {
        return true;
    }
    let upper = name.to_ascii_uppercase();
    let words = ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "PASSPHRASE", "AUTH"];
    let a_key_file = ["KEY_FILE", "KEY_PATH"].iter().any(|w| upper.contains(w))
        || upper.ends_with("_FILE")
        || upper.ends_with("_PATH");
    words.iter().any(|word| upper.contains(word)) || (upper.contains("KEY") && !a_key_file)
}

/// The documented name an unknown one was probably meant to be: the same name in
/// other letter case, or a near miss.
pub fn did_you_mean(name: &str) -> Option<&'static str> {
    if lookup(name).is_some() {
        return None;
    }
    let upper = name.to_ascii_uppercase();
    if let Some(spec) = lookup(&upper) {
        return Some(spec.name);
    }
    let mut best: Option<(&'static str, f64)> = None;
    for spec in VARS {
        for candidate in std::iter::once(&spec.name).chain(spec.aliases) {
            let score = strsim::normalized_damerau_levenshtein(&upper, candidate);
            let prefix = upper.len() >= 8 && candidate.starts_with(&upper);
            let score = if prefix { score.max(0.9) } else { score };
            if score >= 0.85 && best.is_none_or(|(_, s)| score > s) {
                best = Some((spec.name, score));
            }
        }
    }
    best.map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_miss_names_get_a_suggestion() {
        assert_eq!(did_you_mean("BASTION_HOST"), Some("BASTION_HOST_IP"));
        assert_eq!(did_you_mean("ELASTICACHE_ENDPIONT"), Some("ELASTICACHE_ENDPOINT"));
        assert_eq!(did_you_mean("REDIS_PASWORD"), Some("REDIS_PASSWORD"));
        assert_eq!(did_you_mean("REDIS_ADDR"), None);
        assert_eq!(did_you_mean("DATABASE_HOST"), None);
        assert_eq!(did_you_mean("BASTION_PORT"), None);
    }

    #[test]
    fn names_in_the_wrong_case_get_a_suggestion() {
        assert_eq!(did_you_mean("redis_password"), Some("REDIS_PASSWORD"));
        assert_eq!(did_you_mean("Bastion_Host_IP"), Some("BASTION_HOST_IP"));
        assert_eq!(did_you_mean("nat_instance_ip"), Some("BASTION_HOST_IP"));
        assert_eq!(did_you_mean("Redis_Pasword"), Some("REDIS_PASSWORD"));
        assert_eq!(did_you_mean("redis_addr"), None);
    }

    #[test]
    fn unknown_names_that_look_secret_are_secret() {
        for name in [
            "REDIS_PASWORD",
            "redis_password",
            "BASTION_KEY_PASPHRASE",
            "STRIPE_SECRET",
            "SENTRY_KEY",
            "OPENAI_API_KEY",
            "GH_TOKEN",
            "SMTP_PASSPHRASE",
        ] {
            assert!(looks_secret(name), "{name}");
        }
        for name in ["TLS_KEY_FILE", "DEPLOY_KEY_PATH", "SIGNING_KEY_FILE", "REDIS_ADDR"] {
            assert!(!looks_secret(name), "{name}");
        }
    }

    #[test]
    fn secrets_are_known_by_name() {
        assert!(looks_secret("REDIS_PASSWORD"));
        assert!(looks_secret("DATABASE_PASSWORD"));
        assert!(looks_secret("GITHUB_TOKEN"));
        assert!(!looks_secret("REDIS_TUNNEL_PORT"));
    }
}
