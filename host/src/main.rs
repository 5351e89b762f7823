//! `unicompute`: the server. This file only wires: command line, config, plugins,
//! service, HTTP.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

use unicompute_host::api::{self, auth::Auth, AppState};
use unicompute_host::config::Config;
use unicompute_host::plugins::loader;
use unicompute_host::service::Service;

/// One REST API for KVM virtual machines and Docker containers.
#[derive(Parser)]
#[command(name = "unicompute", version, about)]
struct Cli {
    /// Config file (default: config/unicompute.toml when it exists). For `plugins
    /// check`, the check's own TOML instead: [backend] settings and [instance] spec
    /// (default: no settings, the first image the backend lists).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Plugin tools.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Token tools.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Every `*.so` file in the plugin directories and what loading it gives.
    List,
    /// Loads FILE as the host would and runs the conformance scenario against a
    /// backend made from `--config TABLE.toml` ([backend] settings, [instance] spec).
    Check {
        /// The plugin file.
        file: PathBuf,
        /// One JSON document (the steps with name, verdict, ms and message, and a
        /// summary) instead of lines, for CI.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Makes a new random token and prints it with the config entry holding its digest.
    New {
        /// The token's name in the config.
        #[arg(long, default_value = "admin")]
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "admin", value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("UNICOMPUTE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn config_path(cli: &Cli) -> Option<PathBuf> {
    cli.config.clone().or_else(|| {
        let default = Path::new("config/unicompute.toml");
        default.exists().then(|| default.to_owned())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    if let Some(Command::Plugins(PluginsCommand::Check { file, json })) = &cli.command {
        // Here --config is the check's own table, not the server's config.
        let ok =
            unicompute_host::check::run(file, cli.config.as_deref(), *json, &mut std::io::stdout());
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let path = config_path(&cli);
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unicompute: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, path),
        Command::Plugins(PluginsCommand::List) => plugins_list(&config),
        Command::Plugins(PluginsCommand::Check { .. }) => ExitCode::FAILURE,
        Command::Token(TokenCommand::New { name, role }) => {
            let token = api::auth::generate();
            let digest = hex::encode(api::auth::digest(&token));
            println!("token: {token}");
            // A JSON string is a valid TOML basic string: the name is quoted safely.
            let name = serde_json::Value::from(name).to_string();
            println!("[[auth.tokens]]\nname = {name}\nsha256 = \"{digest}\"\nrole = \"{role}\"");
            ExitCode::SUCCESS
        }
    }
}

/// Every `*.so` candidate of the plugin directories and what loading it gives (other
/// files, a build directory's `.d` and `.rlib`, are not plugins and are not listed).
fn plugins_list(config: &Config) -> ExitCode {
    let entries = loader::scan(&config.plugins.dirs);
    for entry in entries.iter().filter(|e| loader::is_plugin_file(&e.path)) {
        match &entry.outcome {
            Ok(p) => println!(
                "{}\tloaded\t{} {} (kind {}, interface {})",
                entry.path.display(),
                p.handshake.name,
                p.handshake.version,
                p.handshake.kind,
                p.handshake.interface_version
            ),
            Err(reason) => println!("{}\tskipped\t{reason}", entry.path.display()),
        }
    }
    ExitCode::SUCCESS
}

fn serve(config: Config, config_path: Option<PathBuf>) -> ExitCode {
    let (service, rx) = match Service::start(config, config_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("unicompute: {e}");
            return ExitCode::from(2);
        }
    };
    let auth = match Auth::from_config(&service.config().auth) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("unicompute: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("unicompute")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("unicompute: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(service, auth, rx));
    // Blocking backend calls still running (a long graceful stop) are abandoned.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn run(
    service: Arc<Service>,
    auth: Auth,
    rx: mpsc::UnboundedReceiver<(String, unicompute_plugin_api::Event)>,
) -> ExitCode {
    let config = service.config();
    let listen = config.server.listen;
    tokio::spawn(Arc::clone(&service).run_events(rx));
    service.sync_all(Duration::from_secs(10)).await;
    tokio::spawn(Arc::clone(&service).run_maintenance());

    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("unicompute: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(listen);
    let state = Arc::new(AppState::new(Arc::clone(&service), auth));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = api::server::Limits {
        max_connections: config.server.max_connections,
        header_read_timeout: Duration::from_secs(config.server.header_read_timeout_secs),
        idle_timeout: Duration::from_secs(config.server.idle_timeout_secs),
        write_timeout: Duration::from_secs(config.server.write_timeout_secs.max(1)),
    };
    let server = api::server::serve(
        listener,
        api::filter(Arc::clone(&state)),
        Some(api::Plain::new(Arc::clone(&state))),
        limits,
        async {
            let _ = stop_rx.await;
        },
    );
    let mut server = tokio::spawn(server);
    // Handlers are in place before the server says it listens: a signal sent right
    // after that line never meets the default action (which ends the process).
    use tokio::signal::unix::{signal, SignalKind};
    let (term, int) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    match signal(SignalKind::hangup()) {
        Ok(hup) => {
            tokio::spawn(reload_on_sighup(Arc::clone(&service), hup));
        }
        Err(e) => tracing::warn!(
            error = %e,
            "cannot listen for SIGHUP; reload with POST /api/v1/compute/backends/reload"
        ),
    }
    tokio::spawn(Arc::clone(&service).watch_plugins());
    // What the start allocated and freed (the config, the document, the plugins'
    // loading, the first resync) goes back to the system before the server idles.
    unicompute_host::memory::release_freed();
    tracing::info!(addr = %local, instances = service.inventory.len(), "listening");
    println!("unicompute: listening on http://{local}");

    tokio::select! {
        _ = shutdown_signal(term.ok(), int.ok()) => {}
        _ = &mut server => {
            tracing::error!("server stopped by itself");
            return ExitCode::FAILURE;
        }
    }
    tracing::info!("shutting down: finishing requests in flight");
    // Read now, so that a reload since the start counts.
    let grace = Duration::from_secs(service.config().server.shutdown_grace_secs);
    let _ = stop_tx.send(());
    // Event streams never end by themselves: end them, so that their connections close.
    service.hub.close();
    if tokio::time::timeout(grace, server).await.is_err() {
        tracing::warn!("requests still in flight after the grace period; exiting");
    }
    service.registry().shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP reloads the config and the plugins (the tokens follow at the next request).
async fn reload_on_sighup(service: Arc<Service>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config and plugins");
        let _ = service.reload().await;
    }
}

/// SIGTERM or SIGINT, whichever comes first (a missing handler never fires).
async fn shutdown_signal(
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
) {
    async fn next(s: Option<tokio::signal::unix::Signal>) {
        match s {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    tokio::select! {
        _ = next(term) => {}
        _ = next(int) => {}
    }
}
