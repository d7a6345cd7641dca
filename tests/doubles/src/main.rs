//! `dbgrant-doubles`: run a test double as a standalone process.
//!
//! ```text
//! dbgrant-doubles mongo --listen 127.0.0.1:0 --user admin:secret --latency-ms 2
//! dbgrant-doubles mongo --login root:pw:root@admin --login op:pw:dbgrantOperator@admin
//! dbgrant-doubles arm --listen 127.0.0.1:0 --lro-polls 2 --tls-dir /tmp/arm
//! ```
//!
//! Once listening, prints one JSON line describing where (for `mongo`:
//! `addr`, `uri`, and with `--tls-dir` the CA file; for `arm`: endpoints, the
//! CA file, and ready-made credentials), then serves until SIGINT/SIGTERM.

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand};
use dbgrant_doubles::arm::{self, ArmDouble, ArmDoubleConfig, BucketLimit, Principal, WindowLimit};
use dbgrant_doubles::mongo::{MongoDouble, MongoDoubleConfig, ScramUser, TestPki};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "dbgrant-doubles", about = "Test doubles for dbgrant's backends")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A MongoDB wire-protocol server with SCRAM and the user/role commands.
    Mongo(MongoArgs),
    /// An ARM + Entra token HTTPS server (Cosmos DB SQL role resources).
    Arm(ArmArgs),
}

#[derive(Args)]
struct ArmArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Time every request takes, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Status polls until a PUT/DELETE operation succeeds (0: synchronous).
    #[arg(long, default_value_t = 2)]
    lro_polls: u32,
    /// Retry-After (seconds) on 202s and running-operation polls.
    #[arg(long)]
    lro_retry_after: Option<u64>,
    /// ARM write bucket size per subscription and principal.
    #[arg(long, default_value_t = 200)]
    write_bucket: u32,
    /// Tokens the write bucket regains per second.
    #[arg(long, default_value_t = 10.0)]
    refill_per_sec: f64,
    /// Control-plane writes allowed per account per window.
    #[arg(long, default_value_t = 500)]
    account_writes: u32,
    /// Length of the per-account write window, in seconds.
    #[arg(long, default_value_t = 300)]
    account_window_secs: u64,
    /// Accepted api-version (repeatable; default: the GA versions built in).
    #[arg(long = "api-version", value_name = "VERSION")]
    api_versions: Vec<String>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime_secs: u64,
    /// Object id of an extra directory principal that role assignments may
    /// name (repeatable).
    #[arg(long = "principal", value_name = "OBJECT_ID")]
    principals: Vec<String>,
    /// Where to write ca.pem, client.pem and federated-token (default: a
    /// new directory under the system temp dir).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
}

#[derive(Args)]
struct MongoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A login with the documented minimum for dbgrant's identity
    /// (userAdminAnyDatabase@admin and readWrite@dbgrant), as NAME:PASSWORD
    /// (repeatable).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// A login with readAnyDatabase@admin only, as NAME:PASSWORD (repeatable).
    #[arg(long = "read-only-user", value_name = "NAME:PASSWORD")]
    read_only_users: Vec<String>,
    /// A login with explicit roles, as NAME:PASSWORD:ROLE@DB[,ROLE@DB...]
    /// (repeatable; the password may contain ':'; an empty role list grants
    /// nothing).
    #[arg(long = "login", value_name = "NAME:PASSWORD:ROLES")]
    logins: Vec<String>,
    /// Time every command takes, in milliseconds.
    #[arg(long, default_value_t = 2)]
    latency_ms: u64,
    /// Version reported by buildInfo.
    #[arg(long, default_value = "8.0.4")]
    server_version: String,
    /// Serve TLS with a generated CA; writes ca.pem and client.pem here.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
}

/// `NAME:PASSWORD:role@db,role@db` (split at the last ':' and each role at
/// its last '@').
fn parse_login_with_roles(spec: &str) -> Result<ScramUser> {
    let (login, roles) = spec
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("expected NAME:PASSWORD:ROLE@DB[,ROLE@DB...], got a spec without roles"))?;
    let (name, password) = parse_login(login)?;
    let roles = roles
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r.rsplit_once('@') {
            Some((role, db)) if !role.is_empty() && !db.is_empty() => Ok((role, db)),
            _ => Err(anyhow!("expected ROLE@DB, got {r:?}")),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ScramUser::with_roles(name, password, &roles))
}

fn parse_login(spec: &str) -> Result<(String, String)> {
    let (name, password) = spec.split_once(':').ok_or_else(|| anyhow!("expected NAME:PASSWORD, got {spec:?}"))?;
    if name.is_empty() {
        return Err(anyhow!("empty user name in {spec:?}"));
    }
    Ok((name.to_string(), password.to_string()))
}

async fn run_mongo(args: MongoArgs) -> Result<()> {
    let mut config = MongoDoubleConfig {
        listen: args.listen,
        latency: Duration::from_millis(args.latency_ms),
        server_version: args.server_version,
        ..MongoDoubleConfig::default()
    };
    for spec in &args.users {
        let (name, password) = parse_login(spec)?;
        config.users.push(ScramUser::admin(name, password));
    }
    for spec in &args.read_only_users {
        let (name, password) = parse_login(spec)?;
        config.users.push(ScramUser::read_only(name, password));
    }
    for spec in &args.logins {
        config.users.push(parse_login_with_roles(spec)?);
    }
    let mut ca_file = None;
    if let Some(dir) = &args.tls_dir {
        let pki = TestPki::generate()?;
        let files = pki.write_files(dir).with_context(|| format!("writing PKI to {}", dir.display()))?;
        ca_file = Some(files.ca_file.display().to_string());
        config.tls = Some(pki.server_tls_config());
    }
    let double = MongoDouble::start(config).await?;
    let ready = serde_json::json!({
        "double": "mongo",
        "addr": double.addr().to_string(),
        "uri": double.uri(),
        "tls_ca_file": ca_file,
    });
    println!("{ready}");
    wait_for_signal().await?;
    double.shutdown().await;
    Ok(())
}

async fn run_arm(args: ArmArgs) -> Result<()> {
    let mut config = ArmDoubleConfig {
        listen: args.listen,
        latency: Duration::from_millis(args.latency_ms),
        lro_polls: args.lro_polls,
        lro_retry_after: args.lro_retry_after,
        write_bucket: BucketLimit::new(args.write_bucket, args.refill_per_sec),
        account_writes: WindowLimit::new(args.account_writes, Duration::from_secs(args.account_window_secs)),
        token_lifetime: Duration::from_secs(args.token_lifetime_secs),
        ..ArmDoubleConfig::default()
    };
    if !args.api_versions.is_empty() {
        config.api_versions = args.api_versions.clone();
    }
    for object_id in &args.principals {
        config.principals.push(Principal::user(object_id.clone()).named("cli principal"));
    }
    let dir = args
        .tls_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("dbgrant-arm-double-{}", std::process::id())));
    let double = ArmDouble::start(config).await?;
    let files = double.write_ca_file(&dir).with_context(|| format!("writing PKI to {}", dir.display()))?;
    let token = double.issue_federated_token_with(
        arm::DEFAULT_WORKLOAD_SUBJECT,
        arm::FEDERATED_TOKEN_AUDIENCE,
        Duration::from_secs(24 * 3600),
    );
    let token_file = dir.join("federated-token");
    std::fs::write(&token_file, token).with_context(|| format!("writing {}", token_file.display()))?;
    let account = ArmDouble::default_account();
    let api_versions: Vec<String> = if args.api_versions.is_empty() {
        arm::DEFAULT_API_VERSIONS.iter().map(|s| s.to_string()).collect()
    } else {
        args.api_versions
    };
    let api_version = if api_versions.iter().any(|v| v == arm::DEFAULT_API_VERSION) {
        arm::DEFAULT_API_VERSION
    } else {
        &api_versions[0]
    };
    let ready = serde_json::json!({
        "double": "arm",
        "addr": double.addr().to_string(),
        "arm_endpoint": double.arm_endpoint(),
        "authority_host": double.authority_host(),
        "token_endpoint": double.token_endpoint(),
        "managed_identity_endpoint": double.managed_identity_endpoint(),
        "managed_identity_header": double.managed_identity_header(),
        "imds_endpoint": double.imds_endpoint(),
        "token_issuer": double.token_issuer(),
        "oidc_issuer": double.oidc_issuer(),
        "tls_ca_file": files.ca_file.display().to_string(),
        "tenant_id": double.tenant_id(),
        "client_id": arm::DEFAULT_CLIENT_ID,
        "client_secret": arm::DEFAULT_CLIENT_SECRET,
        "object_id": arm::DEFAULT_OBJECT_ID,
        "managed_identity_client_id": arm::DEFAULT_MI_CLIENT_ID,
        "managed_identity_object_id": arm::DEFAULT_MI_OBJECT_ID,
        "federated_token_file": token_file.display().to_string(),
        "workload_subject": arm::DEFAULT_WORKLOAD_SUBJECT,
        "subscription_id": account.subscription_id,
        "resource_group": account.resource_group,
        "account_name": account.name,
        "account_id": account.id(),
        "location": arm::DEFAULT_LOCATION,
        "arm_scope": arm::ARM_SCOPE,
        "api_version": api_version,
        "api_versions": api_versions,
    });
    println!("{ready}");
    wait_for_signal().await?;
    double.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Mongo(args) => run_mongo(args).await,
        Command::Arm(args) => run_arm(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_with_roles_parse() {
        let user = parse_login_with_roles("op:pa:ss:dbgrantOperator@admin,read@orders").unwrap();
        assert_eq!((user.name.as_str(), user.password.as_str()), ("op", "pa:ss"));
        let roles: Vec<String> = user.roles.iter().map(|r| r.to_string()).collect();
        assert_eq!(roles, ["dbgrantOperator@admin", "read@orders"]);
        assert!(parse_login_with_roles("op:pw:").unwrap().roles.is_empty());
        assert!(parse_login_with_roles("op:pw:root").is_err());
        assert!(parse_login_with_roles("op").is_err());
    }
}
