//! `uc`: the command-line client of unicompute, in the family of `docker` and
//! `incus`. It speaks only the public HTTP API, through `unicompute-client`.

mod cmd;
mod fmt;
mod progress;
mod remote;
mod streams;
mod term;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use unicompute_client::{Client, Error};

/// Exit codes (documented in the README and docs/cli.md).
pub mod exit {
    /// Something else: a server, backend or connection error.
    pub const OTHER: u8 = 1;
    /// A usage error (clap's own code).
    pub const USAGE: u8 = 2;
    /// Not found (404).
    pub const NOT_FOUND: u8 = 3;
    /// Conflict (409: a name taken, a state that does not allow it).
    pub const CONFLICT: u8 = 4;
    /// Auth (401, 403).
    pub const AUTH: u8 = 5;
    /// `exec --timeout` passed (as timeout(1)).
    pub const TIMED_OUT: u8 = 124;
    /// Ended by Ctrl-C (SIGINT), as shells count it.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser, Debug)]
#[command(
    name = "uc",
    version,
    about = "Manage unicompute containers and VMs",
    long_about = "Manage the containers and VMs of a unicompute server through its HTTP API.\n\
                  An instance is named by its id (i-...) or its name.",
    after_help = "The server: --url, else --remote, else UNICOMPUTE_URL, else UNICOMPUTE_REMOTE, else the \
current remote of the client config (uc remote), else http://127.0.0.1:8080. The token: --token or \
--token-file, else UNICOMPUTE_TOKEN, else the remote's own (a remote's token is only ever sent to its URL).\n\n\
Exit codes: 0 ok, 1 server/backend/connection error, 2 usage error, 3 not found, 4 conflict, 5 auth, 130 Ctrl-C; exec: the command's."
)]
pub struct Cli {
    /// The server's URL [env: UNICOMPUTE_URL] [default: the current remote, else http://127.0.0.1:8080]
    #[arg(long, global = true, conflicts_with = "remote")]
    pub url: Option<String>,
    /// A remote of the client config (uc remote ls) [env: UNICOMPUTE_REMOTE]
    #[arg(long, global = true, value_name = "NAME")]
    pub remote: Option<String>,
    /// The API token (prefer UNICOMPUTE_TOKEN or --token-file: an argument is visible to other users).
    #[arg(long, global = true, env = "UNICOMPUTE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API token.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    /// Only ids (or names), one a line.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables and plain lines.
    Table,
    /// JSON (one value; `events`: one JSON object a line).
    Json,
    /// YAML (one document; `events`: a document per event, each starting with ---).
    Yaml,
}

impl Output {
    /// JSON or YAML: the data, not a table.
    pub fn structured(self) -> bool {
        self != Output::Table
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List instances (running ones; -a for all)
    #[command(visible_alias = "ps", alias = "list")]
    Ls(LsArgs),
    /// Show instances in detail
    #[command(visible_alias = "inspect")]
    Get(NamesArgs),
    /// Create an instance
    Create(Box<CreateArgs>),
    /// Start instances
    Start(NamesArgs),
    /// Stop instances
    Stop(StopArgs),
    /// Restart instances
    Restart(StopArgs),
    /// Pause instances
    Pause(NamesArgs),
    /// Unpause instances
    Unpause(NamesArgs),
    /// Remove instances
    #[command(visible_alias = "delete")]
    Rm(RmArgs),
    /// Change an instance's resources or labels
    Update(UpdateArgs),
    /// Resource usage (running instances when none is named)
    #[command(visible_alias = "stats")]
    Usage(UsageArgs),
    /// Follow the server's events
    Events(EventsArgs),
    /// Print an instance's logs (-f follows them)
    Logs(LogsArgs),
    /// Run a command in a running instance (exits with its status)
    Exec(ExecArgs),
    /// Attach to an instance's console (Ctrl-] detaches)
    Console(ConsoleArgs),
    /// Operations (asynchronous work: pulls, uploads, async calls)
    #[command(subcommand, visible_alias = "operations")]
    Ops(OpsCommand),
    /// Backends
    #[command(subcommand)]
    Backends(BackendsCommand),
    /// Images and templates
    #[command(subcommand)]
    Images(ImagesCommand),
    /// The cluster
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Named servers of the client config (~/.config/unicompute/client.toml)
    #[command(subcommand)]
    Remote(remote::RemoteCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Write man pages (uc.1 and one per command) into a directory
    Man {
        /// Where (made if missing)
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// All instances (without it: running, paused and restarting ones, as docker ps)
    #[arg(short, long)]
    pub all: bool,
    /// Only this backend
    #[arg(long)]
    pub backend: Option<String>,
    /// Only this state (created, running, paused, stopped, restarting, error, unknown)
    #[arg(long)]
    pub state: Option<String>,
    /// Only with this label (key=value; repeatable, all must match)
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub label: Vec<String>,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    /// Instances: ids or names
    #[arg(required = true, value_name = "ID|NAME")]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Stop hard at once
    #[arg(short, long)]
    pub force: bool,
    /// Seconds before a graceful stop turns hard (server default 30)
    #[arg(short, long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Instances: ids or names
    #[arg(required = true, value_name = "ID|NAME")]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Also running or paused instances
    #[arg(short, long)]
    pub force: bool,
    /// Instances: ids or names
    #[arg(required = true, value_name = "ID|NAME")]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The new instance's name (or --name)
    #[arg(value_name = "NAME")]
    pub name_arg: Option<String>,
    /// The new instance's name
    #[arg(long, conflicts_with = "name_arg")]
    pub name: Option<String>,
    /// The backend (default: the only enabled one)
    #[arg(short, long)]
    pub backend: Option<String>,
    /// Image (Docker) or template (KVM)
    #[arg(short, long)]
    pub image: Option<String>,
    /// CPU cores
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Memory limit (512M, 2G)
    #[arg(short, long, value_name = "SIZE", value_parser = fmt::parse_size)]
    pub memory: Option<u64>,
    /// Disk size (20G)
    #[arg(long, value_name = "SIZE", value_parser = fmt::parse_size)]
    pub disk: Option<u64>,
    /// Publish a port (HOST:CONTAINER[/proto]; repeatable)
    #[arg(short, long = "publish", value_name = "PORTS")]
    pub publish: Vec<String>,
    /// Environment variable (KEY=VALUE; repeatable)
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub env: Vec<String>,
    /// Bind mount (/host:/container[:opts]; repeatable)
    #[arg(short, long = "volume", value_name = "VOLUME")]
    pub volume: Vec<String>,
    /// Label (KEY=VALUE; repeatable)
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub label: Vec<String>,
    /// cloud-init user data from a file (KVM)
    #[arg(long, value_name = "FILE")]
    pub cloud_init: Option<PathBuf>,
    /// Start it too
    #[arg(long)]
    pub start: bool,
    /// The request body from a JSON or YAML file ('-': standard input); flags override it
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The command (Docker), after --
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The instance: id or name
    #[arg(value_name = "ID|NAME")]
    pub name: String,
    /// CPU cores
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Memory limit (512M, 2G)
    #[arg(short, long, value_name = "SIZE", value_parser = fmt::parse_size)]
    pub memory: Option<u64>,
    /// Disk size (20G)
    #[arg(long, value_name = "SIZE", value_parser = fmt::parse_size)]
    pub disk: Option<u64>,
    /// Set a label (KEY=VALUE; repeatable)
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub label: Vec<String>,
    /// Remove a label (repeatable)
    #[arg(long, value_name = "KEY")]
    pub unlabel: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Refresh until Ctrl-C
    #[arg(short, long)]
    pub watch: bool,
    /// Seconds between refreshes
    #[arg(long, default_value_t = 2, value_name = "SECONDS")]
    pub interval: u64,
    /// Instances: ids or names (default: the running ones)
    #[arg(value_name = "ID|NAME")]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only this backend (repeatable)
    #[arg(long)]
    pub backend: Vec<String>,
    /// Only this instance, id or name (repeatable)
    #[arg(long, value_name = "ID|NAME")]
    pub instance: Vec<String>,
    /// Only this type or category: instance, backend, plugin, operation, instance.state-changed... (repeatable)
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Resume after this event id
    #[arg(long, value_name = "ID")]
    pub since: Option<u64>,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  uc logs web\n  uc logs -f --tail 10 web\n  uc logs --since 10m --timestamps web\n  uc logs --stderr web | grep -i error"
)]
pub struct LogsArgs {
    /// Keep printing new output until Ctrl-C
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines ('all': every line)
    #[arg(short = 'n', long, value_name = "N", value_parser = streams::parse_tail)]
    pub tail: Option<String>,
    /// Only output since WHEN: RFC 3339 (2026-01-02T15:04:05Z), epoch seconds, or a duration ago (90s, 10m, 1h30m, 2d)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Prefix each line with its instant
    #[arg(short, long)]
    pub timestamps: bool,
    /// Only standard output
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,
    /// Only standard error
    #[arg(long)]
    pub stderr: bool,
    /// The instance: id or name
    #[arg(value_name = "ID|NAME")]
    pub name: String,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Without -i or -t the command runs to completion with no input; its output is printed \
when it ends (stdout to stdout, stderr to stderr), and uc exits with its status (124: the timeout passed).\n\
With -i and/or -t it runs live over a WebSocket: -i sends uc's input to it, -t gives it a terminal \
(raw mode when uc's input is a terminal too); its output, stdout and stderr together, comes to stdout.\n\n\
Examples:\n  uc exec web -- ls -l /etc\n  uc exec -e MODE=debug -w /srv web -- ./check.sh\n  \
uc exec -it web -- sh\n  tar cf - dir | uc exec -i web -- tar xf - -C /tmp"
)]
pub struct ExecArgs {
    /// Send uc's standard input to the command (its end: end of file)
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a terminal (raw mode here when the input is a terminal)
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable (KEY=VALUE; repeatable)
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub env: Vec<String>,
    /// Working directory
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (name or uid[:gid])
    #[arg(short, long)]
    pub user: Option<String>,
    /// Give up after SECONDS (exit 124)
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// The instance: id or name
    #[arg(value_name = "ID|NAME")]
    pub name: String,
    /// The command and its arguments (after --, or after the instance)
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Ctrl-] detaches (the instance goes on). One client at a time: another gets exit 4 \
unless it takes the console over with --force. With a piped input, uc sends it, then leaves once the \
console has been quiet for a second.\n\nExamples:\n  uc console vm1\n  uc console --force vm1\n  \
printf 'uname -a\\n' | uc console vm1"
)]
pub struct ConsoleArgs {
    /// Take the console over from the client that holds it
    #[arg(short, long)]
    pub force: bool,
    /// The instance: id or name
    #[arg(value_name = "ID|NAME")]
    pub name: String,
}

#[derive(Subcommand, Debug)]
pub enum OpsCommand {
    /// List operations
    Ls {
        /// Only this status (pending, running, succeeded, failed, cancelled)
        #[arg(long)]
        status: Option<String>,
        /// Only this kind (create, start, image-pull...)
        #[arg(long)]
        kind: Option<String>,
        /// Only operations on this instance (id or name)
        #[arg(long, value_name = "ID|NAME")]
        instance: Option<String>,
        /// Only this backend
        #[arg(long)]
        backend: Option<String>,
    },
    /// Show operations
    Get {
        /// Operation ids
        #[arg(required = true, value_name = "OP")]
        ids: Vec<String>,
    },
    /// Wait for operations to end (exit code from the first that failed)
    Wait {
        /// Give up after this many seconds
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// Operation ids
        #[arg(required = true, value_name = "OP")]
        ids: Vec<String>,
    },
    /// Cancel operations
    Cancel {
        /// Operation ids
        #[arg(required = true, value_name = "OP")]
        ids: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackendsCommand {
    /// List the configured backends
    Ls,
    /// A backend's versions, capabilities and plugin
    Info {
        /// Backend name
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// List images (every backend's, or one's)
    Ls {
        /// Only this backend
        #[arg(short, long)]
        backend: Option<String>,
    },
    /// Upload a disk image (qcow2 or raw) as a template (KVM), with a progress bar
    #[command(
        after_help = "Ctrl-C abandons the upload: the server keeps nothing of it.\n\n\
Examples:\n  uc images upload -b kvm debian-12.qcow2\n  uc images upload -b kvm --name base.raw ./build/disk.raw"
    )]
    Upload {
        /// The backend (default: the only enabled one)
        #[arg(short, long)]
        backend: Option<String>,
        /// The template's name (default: the file's name)
        #[arg(long)]
        name: Option<String>,
        /// The file
        file: PathBuf,
    },
    /// Pull an image into a backend (Docker)
    #[command(
        after_help = "On a terminal a progress bar follows the pull; Ctrl-C offers to cancel it \
(elsewhere Ctrl-C leaves it running in the server and says how to cancel it)."
    )]
    Pull {
        /// The backend (default: the only enabled one)
        #[arg(short, long)]
        backend: Option<String>,
        /// Image reference (nginx:alpine, registry:5000/team/app:1.2)
        reference: String,
    },
    /// Remove images
    Rm {
        /// The backend (default: the only enabled one)
        #[arg(short, long)]
        backend: Option<String>,
        /// Image names
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Health and allocations per backend
    Status,
}

fn parse_kv(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

/// What a command ends with.
#[derive(Debug)]
pub enum Failure {
    /// A call failed.
    Api(Error),
    /// The command line asks for something impossible (exit 2).
    Usage(String),
    /// Several targets failed (already printed): this exit code.
    Printed(u8),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Api(e)
    }
}

/// The exit code of an error.
pub fn exit_code(e: &Error) -> u8 {
    match e {
        // An operation's error, or one a stream ended with (no HTTP status of its
        // own): by its code.
        Error::Operation { code, .. }
        | Error::Api {
            status: 0, code, ..
        } => code_exit(code),
        Error::Api { status, .. } => match status {
            404 => exit::NOT_FOUND,
            409 => exit::CONFLICT,
            401 | 403 => exit::AUTH,
            _ => exit::OTHER,
        },
        _ => exit::OTHER,
    }
}

fn code_exit(code: &str) -> u8 {
    match code {
        c if c.ends_with("NOT_FOUND") => exit::NOT_FOUND,
        "INVALID_STATE"
        | "INSTANCE_ALREADY_EXISTS"
        | "IMAGE_IN_USE"
        | "IMAGE_ALREADY_EXISTS"
        | "OPERATION_CANCELLED"
        | "CONSOLE_IN_USE" => exit::CONFLICT,
        "UNAUTHORIZED" | "FORBIDDEN" => exit::AUTH,
        _ => exit::OTHER,
    }
}

/// Prints an error as `Error: <message> (<CODE>)` on stderr, with a hint for a
/// missing token; answers its exit code.
pub fn report(e: &Error, has_token: bool) -> u8 {
    eprintln!("Error: {e}");
    if e.status() == Some(401) && !has_token {
        eprintln!("(no token given: set UNICOMPUTE_TOKEN, or use --token-file FILE)");
    }
    exit_code(e)
}

extern "C" fn sigint(_: libc::c_int) {
    if let Some(m) = SIGINT_MESSAGE.get() {
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the message is
        // immutable once set.
        unsafe {
            libc::write(2, m.as_ptr().cast(), m.len());
        }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(i32::from(exit::INTERRUPTED)) }
}

static SIGINT_MESSAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Ctrl-C ends the process at once with 130 (what was printed is flushed line by
/// line), printing `message` on stderr first.
pub fn exit_on_sigint(message: Option<String>) {
    if let Some(m) = message {
        let _ = SIGINT_MESSAGE.set(m.into_bytes());
    }
    // SAFETY: installing a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, sigint as *const () as libc::sighandler_t);
    }
}

/// Writes `uc.1` and `uc-<command>.1` (and `uc-<command>-<sub>.1`) into `dir`.
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<usize> {
    fn write(dir: &std::path::Path, name: &str, cmd: clap::Command) -> std::io::Result<usize> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .title(name.to_uppercase())
            .render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
        let mut n = 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            n += write(dir, &format!("{name}-{}", sub.get_name()), sub.clone())?;
        }
        Ok(n)
    }
    std::fs::create_dir_all(dir)?;
    let mut command = <Cli as clap::CommandFactory>::command();
    command.build();
    write(dir, "uc", command)
}

fn main() -> ExitCode {
    // A closed pipe (`uc ls | head -1`) ends the process quietly, as other tools.
    // SAFETY: restoring the default disposition of SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // What needs no server.
    match &cli.command {
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "uc", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => {
            return match write_man_pages(dir) {
                Ok(n) => {
                    println!("{n} man pages written to {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("Error: cannot write man pages to {}: {e}", dir.display());
                    ExitCode::from(exit::OTHER)
                }
            };
        }
        _ => {}
    }
    let ended = |r: Result<(), Failure>, has_token: bool| match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Api(e)) => ExitCode::from(report(&e, has_token)),
        Err(Failure::Usage(m)) => {
            eprintln!("Error: {m}");
            ExitCode::from(exit::USAGE)
        }
        Err(Failure::Printed(code)) => ExitCode::from(code),
    };
    if let Command::Remote(r) = &cli.command {
        return ended(remote::run(&cli, r), true);
    }
    let target = match remote::resolve(&cli) {
        Ok(t) => t,
        Err(m) => {
            eprintln!("Error: {m}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let client = match Client::new(&target.url, target.token) {
        Ok(c) => c,
        Err(e) => {
            match &target.remote {
                Some(r) => eprintln!("Error: remote {r}: {}: {}", target.url, e.message()),
                None => eprintln!("Error: --url {}: {}", target.url, e.message()),
            }
            return ExitCode::from(exit::USAGE);
        }
    };
    ended(cmd::run(&cli, &client), client.has_token())
}
