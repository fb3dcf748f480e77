//! `wasmraft serve`: run a node. `--dev` is a single node that sets itself
//! up (bootstrap, bundled example modules); otherwise the node is configured
//! from flags or a TOML file, as one member of a cluster.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::api::{self, DeployUpload};
use crate::auth::Caller;
use crate::auth::tls::TlsSettings;
use crate::command::ModuleLimits;
use crate::node::config::{LimitSettings, NodeConfig, RaftSettings, TelemetrySettings};
use crate::node::handle::NodeHandle;
use crate::node::{Node, NodeOptions, RunningNode};
use crate::telemetry::TraceSettings;
use crate::telemetry::logs::LogFormat;

const DEV_DATA_DIR: &str = "./wasmraft-data";
const DEV_LISTEN: &str = "127.0.0.1:7070";
/// The endpoint the client CLI dials when told nothing else.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7070";
const DEV_NODE_ID: u64 = 1;
/// How long dev mode waits for its single node to elect itself.
const DEV_LEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").args(["dev", "node_id", "config"]).required(true)))]
pub struct ServeArgs {
    /// Run a single development node: initialises itself the first time and
    /// deploys the bundled example modules (counter, kv, bank).
    #[arg(long)]
    dev: bool,
    /// Where the node keeps its log, state and compiled modules
    /// [dev default: ./wasmraft-data].
    #[arg(long, required_unless_present_any = ["dev", "config"], conflicts_with = "config")]
    data_dir: Option<PathBuf>,
    /// The HOST:PORT the gRPC server binds [dev default: 127.0.0.1:7070].
    #[arg(long, value_parser = parse_listen, required_unless_present_any = ["dev", "config"], conflicts_with = "config")]
    listen: Option<SocketAddr>,
    /// With --dev: do not deploy the bundled example modules.
    #[arg(long)]
    no_examples: bool,
    /// This node's id in the cluster (non-zero, never reused).
    #[arg(long, conflicts_with_all = ["dev", "config"])]
    node_id: Option<u64>,
    /// Initialise a one-member cluster if the data directory holds no log.
    #[arg(long, conflicts_with_all = ["dev", "config"])]
    bootstrap: bool,
    /// The address peers and clients dial for this node, when it differs
    /// from --listen (for example when listening on 0.0.0.0).
    #[arg(long, conflicts_with_all = ["dev", "config"])]
    advertise: Option<String>,
    /// The file holding the secret every node of the cluster shares (make
    /// one with `wasmraft cluster new-secret FILE` and copy it to every
    /// node): peers prove with it that they belong to the cluster. Without
    /// it, any caller can send Raft messages to this node.
    #[arg(long, env = "WASMRAFT_CLUSTER_SECRET_FILE", conflicts_with_all = ["dev", "config"])]
    cluster_secret_file: Option<PathBuf>,
    /// Serve every caller without authentication, as `anonymous` allowed
    /// everything: only for a network you trust entirely. Without it, a
    /// node needs --cluster-secret-file and authenticates every call but
    /// `Cluster.Health` by bearer token.
    #[arg(long, conflicts_with_all = ["dev", "config"])]
    insecure: bool,
    /// With --dev: authenticate callers as a cluster node does (a bootstrap
    /// admin token, roles), to try access control locally. The cluster
    /// secret is made in the data directory.
    #[arg(long, requires = "dev")]
    auth: bool,
    /// Serve TLS with this certificate chain (PEM); peers are then dialled
    /// over TLS too, presenting it.
    #[arg(long, value_name = "FILE", requires = "tls_key", conflicts_with_all = ["dev", "config"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert", conflicts_with_all = ["dev", "config"])]
    tls_key: Option<PathBuf>,
    /// Accept client certificates signed by this authority (PEM): a client
    /// presenting one is the subject its common name (CN) names, with no
    /// token. Also the authority peers' certificates are checked against,
    /// unless --tls-peer-ca is given.
    #[arg(long, value_name = "FILE", requires = "tls_cert", conflicts_with_all = ["dev", "config"])]
    tls_client_ca: Option<PathBuf>,
    /// The authority the other nodes' certificates chain to (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert", conflicts_with_all = ["dev", "config"])]
    tls_peer_ca: Option<PathBuf>,
    /// Read every node setting from a TOML file (see `NodeConfig`).
    #[arg(long, conflicts_with_all = ["dev", "node_id"])]
    config: Option<PathBuf>,
    /// Serve the node's metrics at http://ADDR/metrics (Prometheus text
    /// format), e.g. 127.0.0.1:9100 [default: not served; config
    /// `telemetry.metrics_listen`].
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    metrics_listen: Option<SocketAddr>,
    /// Send traces and metrics to this OpenTelemetry collector over
    /// OTLP/gRPC (Jaeger accepts it on port 4317), e.g. http://127.0.0.1:4317
    /// [default: none; config `telemetry.otlp_endpoint`].
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The fraction of the traces started here that are recorded, 0 to 1
    /// (calls that bring a `traceparent` follow their caller's choice)
    /// [default: 1; config `telemetry.trace_sampling`].
    #[arg(long, value_name = "RATIO", env = "OTEL_TRACES_SAMPLER_ARG")]
    trace_sampling: Option<f64>,
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    text.to_socket_addrs()
        .map_err(|error| format!("`{text}` is not a HOST:PORT to listen on: {error}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

/// The node configuration the arguments describe.
fn node_config(args: &ServeArgs) -> anyhow::Result<NodeConfig> {
    anyhow::ensure!(
        args.dev || !args.no_examples,
        "--no-examples only applies to --dev"
    );
    if let Some(path) = &args.config {
        let mut config = NodeConfig::from_file(path)?;
        telemetry_options(args, &mut config.telemetry);
        return Ok(config);
    }
    let listen = match args.listen {
        Some(listen) => listen,
        None if args.dev => parse_listen(DEV_LISTEN).map_err(anyhow::Error::msg)?,
        None => anyhow::bail!("--listen is required"),
    };
    anyhow::ensure!(
        !args.dev || args.auth || listen.ip().is_loopback(),
        "a dev node serves unauthenticated callers as administrators, so it listens on loopback only (127.0.0.1 or ::1); add --auth to authenticate callers, or run a cluster node"
    );
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None if args.dev => PathBuf::from(DEV_DATA_DIR),
        None => anyhow::bail!("--data-dir is required"),
    };
    // A dev node with --auth keeps its own cluster secret.
    let cluster_secret_file = match &args.cluster_secret_file {
        Some(file) => Some(file.clone()),
        None if args.auth => Some(dev_secret_file(&data_dir)?),
        None => None,
    };
    let mut config = NodeConfig {
        node_id: if args.dev {
            DEV_NODE_ID
        } else {
            args.node_id.context("--node-id is required")?
        },
        listen,
        advertise: args.advertise.clone(),
        data_dir,
        bootstrap: args.dev || args.bootstrap,
        cluster_secret_file,
        insecure: args.insecure || (args.dev && !args.auth),
        tls: TlsSettings {
            cert_file: args.tls_cert.clone(),
            key_file: args.tls_key.clone(),
            client_ca_file: args.tls_client_ca.clone(),
            peer_ca_file: args.tls_peer_ca.clone(),
        },
        raft: RaftSettings::default(),
        limits: LimitSettings::default(),
        membership: Default::default(),
        cluster: Default::default(),
        telemetry: Default::default(),
    };
    telemetry_options(args, &mut config.telemetry);
    // Port 0 picks a free port in dev mode (the endpoint is printed).
    if !(args.dev && config.listen.port() == 0) {
        config.validate()?;
    }
    Ok(config)
}

/// The telemetry options of the command line, over the configuration's.
fn telemetry_options(args: &ServeArgs, telemetry: &mut TelemetrySettings) {
    if let Some(address) = args.metrics_listen {
        telemetry.metrics_listen = Some(address);
    }
    if let Some(endpoint) = &args.otlp_endpoint {
        telemetry.otlp_endpoint = Some(endpoint.clone());
    }
    if let Some(sampling) = args.trace_sampling {
        telemetry.trace_sampling = Some(sampling);
    }
}

/// The cluster secret of a dev node with --auth, made on its first start.
fn dev_secret_file(data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("cluster.secret");
    if !path.exists() {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let secret = crate::auth::ClusterSecret::generate()
            .map_err(|error| anyhow::anyhow!("no randomness for a secret: {error}"))?;
        crate::auth::write_private(&path, secret.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

pub fn run(args: ServeArgs, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    let config = match node_config(&args) {
        Ok(config) => config,
        Err(error) => {
            let _ = crate::telemetry::init(log_format, None);
            return Err(error);
        }
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let traces = config.telemetry.otlp_endpoint.as_ref().map(|endpoint| {
        let mut traces = TraceSettings::new(
            endpoint.clone(),
            config.telemetry.trace_sampling.unwrap_or(1.0),
            config.node_id,
        );
        traces.cluster_id = crate::storage::recorded_cluster_id(&config.data_dir);
        traces
    });
    // The exporter's channel lives on the runtime.
    let telemetry =
        tokio.block_on(async { crate::telemetry::init(log_format, traces.as_ref()) })?;
    let served = tokio.block_on(serve(args, config));
    telemetry.shut_down();
    served?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs, config: NodeConfig) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let started_with = config.clone();
    let examples = args.dev && !args.no_examples;
    if config.insecure && !args.dev {
        tracing::warn!(
            "--insecure: every caller is served unauthenticated, as `anonymous` allowed everything; anyone who reaches {} controls this cluster",
            config.listen
        );
        eprintln!(
            "WARNING: --insecure: authentication is off; anyone who reaches {} may do anything",
            config.listen
        );
    }
    let options = NodeOptions {
        // A script that starts a dev node and waits for it to serve finds
        // the examples deployed.
        starting: examples.then(|| "deploying the example modules".to_owned()),
        // A dev node listens on loopback alone and never has peers.
        listen_before_bootstrap: !args.dev,
        ..NodeOptions::default()
    };
    let node = Node::start(config, options)
        .await
        .context("cannot start the node")?;
    // A new cluster's id is drawn at its bootstrap, and a joining node's
    // comes with its admission: both after the exporter started.
    let credentials = node.handle().peer_auth().clone();
    crate::telemetry::traces::name_cluster_by(move || credentials.cluster_id());
    let outcome = if args.dev {
        set_up_dev(&node, !args.no_examples).await
    } else {
        println!("wasmraft node {} serving on {}", node.id(), node.endpoint());
        Ok(())
    };
    if let Some(token) = node.admin_token() {
        println!(
            "The cluster's first administrator is `{}`, with this token (shown once; kept in {}, mode 0600):",
            crate::node::FIRST_ADMIN,
            node.admin_token_file().display()
        );
        println!("  {token}");
        println!(
            "Use it with --token or WASMRAFT_TOKEN, and create tokens for others: wasmraft access token create SUBJECT"
        );
    }
    if outcome.is_ok() {
        if args.dev {
            print_dev_banner(&node, &data_dir);
        }
        let reloads = tokio::spawn(reload_on_hangup(
            node.handle().clone(),
            args.clone(),
            started_with,
        ));
        let stopped = wait_for_signal().await;
        reloads.abort();
        stopped?;
        eprintln!("shutting down");
    }
    node.shutdown().await.context("unclean shutdown")?;
    outcome
}

async fn set_up_dev(node: &RunningNode, examples: bool) -> anyhow::Result<()> {
    let handle = node.handle();
    handle
        .wait_for_leader(DEV_LEADER_TIMEOUT)
        .await
        .context("the dev node did not become leader in time")?;
    if examples {
        deploy_examples(handle).await?;
    }
    handle.ready();
    Ok(())
}

/// Deploys each bundled example not deployed yet, through the log like any
/// other deploy.
async fn deploy_examples(handle: &NodeHandle) -> anyhow::Result<()> {
    for (name, wasm) in wasmraft_examples::ALL {
        if handle.reader().module(name)?.is_some() {
            continue;
        }
        let upload = DeployUpload {
            name: (*name).to_owned(),
            wasm: wasm.to_vec(),
            hash: Sha256::digest(wasm).into(),
            init_argument: None,
            limits: ModuleLimits::default(),
        };
        // The node's own setup: not a caller's command.
        let caller = if handle.gate().enforced() {
            Caller::system()
        } else {
            Caller::unchecked(crate::auth::ANONYMOUS)
        };
        let module = api::deploy_module(handle, &caller, upload, None, &|_| {})
            .await
            .with_context(|| format!("cannot deploy the example module `{name}`"))?;
        println!(
            "deployed example `{}` v{} sha256:{} ({} bytes)",
            module.name, module.version, module.sha256_hex, module.size_bytes
        );
    }
    Ok(())
}

fn print_dev_banner(node: &RunningNode, data_dir: &std::path::Path) {
    let endpoint = node.endpoint();
    // The client CLI dials DEFAULT_ENDPOINT unless told otherwise.
    let prefix = if endpoint == DEFAULT_ENDPOINT {
        String::new()
    } else {
        format!("WASMRAFT_ENDPOINT={endpoint} ")
    };
    println!();
    println!(
        "wasmraft dev node serving on {endpoint} (data in {})",
        data_dir.display()
    );
    if node.handle().gate().enforced() {
        println!("Callers authenticate (--auth): pass --token or WASMRAFT_TOKEN.");
    } else {
        println!(
            "Dev mode: no authentication; every local caller is `anonymous` with all rights (cluster_admin). `--dev --auth` tries access control."
        );
    }
    println!("Try:");
    println!("  {prefix}wasmraft invoke counter '{{\"op\":\"add\",\"by\":1}}'");
    println!("  {prefix}wasmraft query counter '{{\"op\":\"get\"}}'");
    println!("Stop with Ctrl-C.");
}

/// Returns on SIGINT or SIGTERM.
/// Reloads this node's `[limits]` from its configuration file at every
/// SIGHUP. A file that does not read or validate keeps the old limits, and
/// the log says why; a change outside `[limits]` is named and waits for a
/// restart.
async fn reload_on_hangup(handle: NodeHandle, args: ServeArgs, started_with: NodeConfig) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP: the limits do not reload");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            reload_limits(&handle, &args, &started_with);
        }
    }
    #[cfg(not(unix))]
    let _ = (handle, args, started_with);
}

fn reload_limits(handle: &NodeHandle, args: &ServeArgs, started_with: &NodeConfig) {
    let Some(path) = &args.config else {
        tracing::warn!(
            "SIGHUP: this node was started without --config FILE, so it has no file to reload its limits from"
        );
        return;
    };
    let mut config = match NodeConfig::from_file(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(
                file = %path.display(),
                "SIGHUP: kept the limits in force: {error}"
            );
            return;
        }
    };
    telemetry_options(args, &mut config.telemetry);
    let restart_only = sections_changed(started_with, &config);
    if !restart_only.is_empty() {
        tracing::warn!(
            file = %path.display(),
            "SIGHUP: {} changed in the file; only [limits] reloads, the rest takes effect at the next start",
            restart_only.join(", ")
        );
    }
    match handle.reload_limits(config.limits) {
        Ok(kept) if kept.is_empty() => {
            tracing::info!(file = %path.display(), "SIGHUP: limits reloaded");
        }
        Ok(kept) => tracing::warn!(
            file = %path.display(),
            "SIGHUP: limits reloaded, but {} keep their values until the next start",
            kept.join(", ")
        ),
        Err(error) => tracing::warn!(
            file = %path.display(),
            "SIGHUP: kept the limits in force: {error}"
        ),
    }
}

/// The parts of the configuration, other than `[limits]`, that differ.
fn sections_changed(before: &NodeConfig, after: &NodeConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut note = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    note(before.node_id != after.node_id, "node_id");
    note(before.listen != after.listen, "listen");
    note(before.advertise != after.advertise, "advertise");
    note(before.data_dir != after.data_dir, "data_dir");
    note(
        before.cluster_secret_file != after.cluster_secret_file,
        "cluster_secret_file",
    );
    note(before.insecure != after.insecure, "insecure");
    note(before.tls != after.tls, "[tls]");
    note(
        before.raft != after.raft,
        "[raft] (its timeouts hold for the life of the process: restart the nodes one at a time)",
    );
    note(before.membership != after.membership, "[membership]");
    note(before.telemetry != after.telemetry, "[telemetry]");
    note(
        before.cluster != after.cluster,
        "[cluster] (read at bootstrap only; `wasmraft cluster settings set` changes the cluster's)",
    );
    changed
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot listen for SIGINT")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}
