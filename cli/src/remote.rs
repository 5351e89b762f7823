//! Named servers (remotes) in the client config, as `incus remote`:
//! `~/.config/unicompute/client.toml` (or `$XDG_CONFIG_HOME/unicompute/client.toml`,
//! or the file named by `UNICOMPUTE_CLIENT_CONFIG`).
//!
//! ```toml
//! current = "prod"
//!
//! [remotes.prod]
//! url = "http://10.0.0.5:8080"
//! token_file = "/root/prod.token"   # read at each use
//!
//! [remotes.lab]
//! url = "http://127.0.0.1:8080"
//! token = "..."                      # kept here: the file is written mode 0600
//! ```

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::{Deserialize, Serialize};
use unicompute_client::Client;

use crate::fmt::table;
use crate::{exit, report, Cli, Failure};

#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Add a remote (its URL and token are checked first, unless --no-check)
    #[command(
        after_help = "The token: --token-file FILE is kept as that file's path (read at each use); \
--token-stdin reads it from standard input, and it (or --token, or UNICOMPUTE_TOKEN) is kept in the \
client config, which is written readable by its owner only. The first remote added becomes the current one.\n\n\
Examples:\n  uc remote add prod http://10.0.0.5:8080 --token-file ~/prod.token\n  \
pass show uc/lab | uc remote add lab http://192.168.1.20:8080 --token-stdin"
    )]
    Add {
        /// The remote's name (letters, digits, '.', '_', '-')
        name: String,
        /// The server's URL
        url: String,
        /// Read the token from standard input and keep it in the client config
        #[arg(long)]
        token_stdin: bool,
        /// Add it even if it does not answer or refuses the token
        #[arg(long)]
        no_check: bool,
    },
    /// List the remotes (never their tokens)
    #[command(visible_alias = "list")]
    Ls,
    /// Make a remote the current one
    #[command(visible_alias = "switch")]
    Use {
        /// The remote's name
        name: String,
    },
    /// Remove a remote
    #[command(visible_alias = "remove")]
    Rm {
        /// The remote's name
        name: String,
    },
}

/// The client config file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The remote used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// One remote.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Remote {
    /// The token, read from its file when it names one.
    pub fn token(&self) -> Result<Option<String>, String> {
        if let Some(f) = &self.token_file {
            return std::fs::read_to_string(f)
                .map(|t| Some(t.trim().to_owned()).filter(|t| !t.is_empty()))
                .map_err(|e| format!("cannot read the token file {}: {e}", f.display()));
        }
        Ok(self.token.clone().filter(|t| !t.is_empty()))
    }
}

/// Where the client config is.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("UNICOMPUTE_CLIENT_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"));
    base.join("unicompute").join("client.toml")
}

/// Reads the client config (empty when there is no file).
pub fn load(path: &Path) -> Result<Config, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => {
            return Err(format!(
                "cannot read the client config {}: {e}",
                path.display()
            ))
        }
    };
    let config: Config =
        toml::from_str(&text).map_err(|e| format!("the client config {}: {e}", path.display()))?;
    // As ssh does for its keys: say so when others can read a token.
    if config.remotes.values().any(|r| r.token.is_some()) {
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: {} holds a token and is readable by others (chmod 600 it)",
                    path.display()
                );
            }
        }
    }
    Ok(config)
}

/// Writes the client config whole (a new file, mode 0600, renamed over the old one).
pub fn save(path: &Path, config: &Config) -> Result<(), String> {
    let fail =
        |e: std::io::Error| format!("cannot write the client config {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let text = toml::to_string(config).map_err(|e| format!("the client config: {e}"))?;
    let part = path.with_extension(format!("toml.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&part)
        .map_err(fail)?;
    let written = f
        .write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&part, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&part);
        return Err(fail(e));
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Where the connection goes and with which token, from the flags, the environment
/// and the client config (the order is in `uc --help`).
pub struct Target {
    pub url: String,
    pub token: Option<String>,
    /// The remote the URL came from.
    pub remote: Option<String>,
}

/// The default server when nothing names one.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

pub fn resolve(cli: &Cli) -> Result<Target, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // The token given by the flags or UNICOMPUTE_TOKEN (clap folds the two).
    let given = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read the token file {}: {e}", f.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    }
    .filter(|t| !t.is_empty());
    let named = if let Some(u) = &cli.url {
        return Ok(Target {
            url: u.clone(),
            token: given,
            remote: None,
        });
    } else if let Some(r) = &cli.remote {
        Some(r.clone())
    } else if let Some(u) = env("UNICOMPUTE_URL") {
        return Ok(Target {
            url: u,
            token: given,
            remote: None,
        });
    } else {
        env("UNICOMPUTE_REMOTE")
    };
    let file = path();
    let config = load(&file)?;
    let name = match named.or_else(|| config.current.clone()) {
        Some(n) => n,
        None => {
            return Ok(Target {
                url: DEFAULT_URL.into(),
                token: given,
                remote: None,
            })
        }
    };
    let remote = config.remotes.get(&name).ok_or_else(|| {
        format!(
            "no remote named '{name}' in {} (uc remote ls)",
            file.display()
        )
    })?;
    let token = match given {
        Some(t) => Some(t),
        None => remote.token()?,
    };
    Ok(Target {
        url: remote.url.clone(),
        token,
        remote: Some(name),
    })
}

/// `uc remote ...`.
pub fn run(cli: &Cli, command: &RemoteCommand) -> Result<(), Failure> {
    let file = path();
    let mut config = load(&file).map_err(Failure::Usage)?;
    match command {
        RemoteCommand::Add {
            name,
            url,
            token_stdin,
            no_check,
        } => {
            if !valid_name(name) {
                return Err(Failure::Usage(format!(
                    "'{name}' is not a remote name (letters, digits, '.', '_', '-')"
                )));
            }
            if config.remotes.contains_key(name) {
                eprintln!("Error: a remote named '{name}' exists (uc remote rm {name} first)");
                return Err(Failure::Printed(exit::CONFLICT));
            }
            let mut remote = Remote {
                url: url.trim_end_matches('/').to_owned(),
                token: None,
                token_file: None,
            };
            if *token_stdin {
                if cli.token.is_some() || cli.token_file.is_some() {
                    return Err(Failure::Usage(
                        "--token-stdin and --token/--token-file/UNICOMPUTE_TOKEN: choose one"
                            .into(),
                    ));
                }
                if std::io::stdin().is_terminal() {
                    eprint!("Token for {name}: ");
                }
                let mut t = String::new();
                std::io::stdin()
                    .read_to_string(&mut t)
                    .map_err(|e| Failure::Usage(format!("reading the token: {e}")))?;
                let t = t.trim();
                if t.is_empty() {
                    return Err(Failure::Usage("no token on standard input".into()));
                }
                remote.token = Some(t.to_owned());
            } else if let Some(f) = &cli.token_file {
                let f = std::path::absolute(f)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", f.display())))?;
                remote.token_file = Some(f);
            } else if let Some(t) = cli
                .token
                .as_ref()
                .map(|t| t.trim())
                .filter(|t| !t.is_empty())
            {
                remote.token = Some(t.to_owned());
            }
            let token = remote.token().map_err(Failure::Usage)?;
            let client = Client::new(&remote.url, token.clone())
                .map_err(|e| Failure::Usage(format!("{}: {}", remote.url, e.message())))?;
            if !no_check {
                // A viewer's call: the URL answers as unicompute, and the token is taken.
                if let Err(e) = client.list_backends() {
                    let code = report(&e, token.is_some());
                    eprintln!("(the remote was not added; --no-check adds it anyway)");
                    return Err(Failure::Printed(code));
                }
            }
            config.remotes.insert(name.clone(), remote);
            let now_current = config.current.is_none();
            if now_current {
                config.current = Some(name.clone());
            }
            save(&file, &config).map_err(Failure::Usage)?;
            if !cli.quiet {
                println!(
                    "Remote {name} added{}",
                    if now_current {
                        " (now the current remote)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        RemoteCommand::Ls => {
            let current = config.current.as_deref();
            if cli.quiet {
                config.remotes.keys().for_each(|n| println!("{n}"));
                return Ok(());
            }
            let auth = |r: &Remote| match (&r.token_file, &r.token) {
                (Some(f), _) => format!("token file {}", f.display()),
                (None, Some(_)) => "token".to_owned(),
                (None, None) => "none".to_owned(),
            };
            if cli.output.structured() {
                let list: Vec<serde_json::Value> = config
                    .remotes
                    .iter()
                    .map(|(n, r)| {
                        serde_json::json!({
                            "name": n,
                            "url": r.url,
                            "auth": match (&r.token_file, &r.token) {
                                (Some(_), _) => "token-file",
                                (None, Some(_)) => "token",
                                (None, None) => "none",
                            },
                            "tokenFile": r.token_file,
                            "current": Some(n.as_str()) == current,
                        })
                    })
                    .collect();
                crate::cmd::print_value(cli.output, &list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = config
                .remotes
                .iter()
                .map(|(n, r)| {
                    vec![
                        if Some(n.as_str()) == current {
                            format!("{n} (current)")
                        } else {
                            n.clone()
                        },
                        r.url.clone(),
                        auth(r),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "URL", "AUTH"], &rows, &|_, _| None));
            Ok(())
        }
        RemoteCommand::Use { name } => {
            if !config.remotes.contains_key(name) {
                eprintln!(
                    "Error: no remote named '{name}' in {} (uc remote ls)",
                    file.display()
                );
                return Err(Failure::Printed(exit::NOT_FOUND));
            }
            config.current = Some(name.clone());
            save(&file, &config).map_err(Failure::Usage)?;
            if !cli.quiet {
                println!("Current remote: {name}");
            }
            Ok(())
        }
        RemoteCommand::Rm { name } => {
            if config.remotes.remove(name).is_none() {
                eprintln!(
                    "Error: no remote named '{name}' in {} (uc remote ls)",
                    file.display()
                );
                return Err(Failure::Printed(exit::NOT_FOUND));
            }
            if config.current.as_deref() == Some(name) {
                config.current = None;
            }
            save(&file, &config).map_err(Failure::Usage)?;
            if !cli.quiet {
                println!("Remote {name} removed");
            }
            Ok(())
        }
    }
}
