//! Bearer-token auth: tokens stored as SHA-256 digests, compared in constant time,
//! each with a role.

use std::io::Write;
use std::path::Path;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::routes::Route;
use crate::config::{AuthConfig, Role, TokenConfig};
use unicompute_plugin_api::sync::{read, write};

/// Why auth could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The generated token could not be written or read.
    #[error("token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The accepted tokens.
#[derive(Debug)]
pub struct Auth {
    tokens: Vec<(String, [u8; 32], Role)>,
    /// Tokens seen and accepted, each with the index of its entry in `tokens`: a
    /// request with one of them is matched by a constant-time comparison of the bytes
    /// (a few ns) instead of a SHA-256 (about 1 µs on a CPU without SHA instructions,
    /// 3% of a read). Only accepted tokens enter it, so it holds at most one entry per
    /// configured token, whatever is sent; it lives as long as this `Auth`, which a
    /// reload of the config replaces. A token is compared with every entry, so which
    /// one matched (or how near a guess came) takes no time to tell.
    accepted: std::sync::RwLock<Vec<(Box<[u8]>, usize)>>,
}

/// The SHA-256 of a token, as 32 bytes.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// Auth from configured tokens.
    pub fn from_tokens(tokens: &[TokenConfig]) -> Self {
        let tokens = tokens
            .iter()
            .filter_map(|t| {
                let mut d = [0u8; 32];
                hex::decode_to_slice(&t.sha256, &mut d).ok()?;
                Some((t.name.clone(), d, t.role))
            })
            .collect();
        Auth::new(tokens)
    }

    fn new(tokens: Vec<(String, [u8; 32], Role)>) -> Self {
        Auth {
            tokens,
            accepted: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// Auth from the config; with no token configured, an admin token read from the
    /// token file, or made and written there (mode 0600) and printed once.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthError> {
        if !config.tokens.is_empty() {
            return Ok(Self::from_tokens(&config.tokens));
        }
        let path = &config.token_file;
        let err = |source| AuthError::TokenFile {
            path: path.display().to_string(),
            source,
        };
        let token = match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => {
                tracing::info!(file = %path.display(), "admin token read from the token file");
                t.trim().to_owned()
            }
            _ => {
                let token = generate();
                write_private(path, &token).map_err(err)?;
                println!("unicompute: no token configured; made an admin token:\n{token}\n(also written to {}, readable only by its owner)", path.display());
                tracing::info!(file = %path.display(), "admin token made");
                token
            }
        };
        Ok(Auth::new(vec![(
            "generated-admin".into(),
            digest(&token),
            Role::Admin,
        )]))
    }

    /// The token's name and role, if the token is accepted. Compares against every
    /// configured digest in constant time.
    pub fn check(&self, token: &str) -> Option<(&str, Role)> {
        let index = self.seen(token.as_bytes()).or_else(|| {
            let d = digest(token);
            let mut found = None;
            for (i, (_, digest, _)) in self.tokens.iter().enumerate() {
                if bool::from(digest.ct_eq(&d)) && found.is_none() {
                    found = Some(i);
                }
            }
            let i = found?;
            let mut accepted = write(&self.accepted);
            if !accepted.iter().any(|(t, _)| **t == *token.as_bytes()) {
                accepted.push((token.as_bytes().into(), i));
            }
            Some(i)
        })?;
        let (name, _, role) = &self.tokens[index];
        Some((name.as_str(), *role))
    }

    /// The entry of an already accepted token: compared with each in constant time
    /// (`ct_eq` of slices of unequal length is false at once, which tells only the
    /// length, the same for every token this server makes).
    fn seen(&self, token: &[u8]) -> Option<usize> {
        let mut found = None;
        for (t, i) in read(&self.accepted).iter() {
            if bool::from(t.ct_eq(token)) && found.is_none() {
                found = Some(*i);
            }
        }
        found
    }
}

/// A new random token: 32 bytes, hex.
pub fn generate() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{token}")
}

/// The role a matched route needs: reading needs a viewer; start, stop, restart,
/// pause and unpause an operator; anything else an admin. Decided on the route, not
/// on the path's words, so an instance id that reads like an action changes nothing.
pub fn required_role(route: &Route<'_>) -> Role {
    match route {
        Route::Healthz
        | Route::OpenApi
        | Route::Metrics
        | Route::WhoAmI
        | Route::ListInstances
        | Route::GetInstance(_)
        | Route::GetByName(_)
        | Route::Usage(_)
        | Route::ClusterStatus
        | Route::Backends
        | Route::BackendInfo(_)
        | Route::BackendImages(_)
        | Route::Events
        | Route::ListOperations
        | Route::GetOperation(_)
        | Route::Logs(_) => Role::Viewer,
        Route::Action(..) => Role::Operator,
        Route::CreateInstance
        | Route::UpdateInstance(_)
        | Route::DeleteInstance(_)
        | Route::Reload
        | Route::CancelOperation(_)
        | Route::AddImage(_)
        | Route::DeleteImage(..)
        | Route::Console(_)
        | Route::Exec(_)
        | Route::ExecInteractive(_) => Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_digest() {
        let auth = Auth::from_tokens(&[
            TokenConfig {
                name: "v".into(),
                sha256: hex::encode(digest("viewer-token")),
                role: Role::Viewer,
            },
            TokenConfig {
                name: "a".into(),
                sha256: hex::encode(digest("admin-token")),
                role: Role::Admin,
            },
        ]);
        assert_eq!(auth.check("viewer-token"), Some(("v", Role::Viewer)));
        assert_eq!(auth.check("admin-token"), Some(("a", Role::Admin)));
        assert_eq!(auth.check("admin-token "), None);
        assert_eq!(auth.check(""), None);
    }

    #[test]
    fn accepted_tokens_are_remembered_and_nothing_else() {
        let auth = Auth::from_tokens(&[
            TokenConfig {
                name: "v".into(),
                sha256: hex::encode(digest("viewer-token")),
                role: Role::Viewer,
            },
            TokenConfig {
                name: "a".into(),
                sha256: hex::encode(digest("admin-token")),
                role: Role::Admin,
            },
        ]);
        for _ in 0..3 {
            assert_eq!(auth.check("admin-token"), Some(("a", Role::Admin)));
            assert_eq!(auth.check("viewer-token"), Some(("v", Role::Viewer)));
            // Refused tokens are never remembered, however many are sent.
            assert_eq!(auth.check("admin-tokem"), None);
            assert_eq!(auth.check("admin-token-and-more"), None);
            assert_eq!(auth.check("admin"), None);
        }
        let accepted = read(&auth.accepted);
        assert_eq!(accepted.len(), 2);
        assert_eq!(auth.seen(b"admin-token"), Some(1));
        assert_eq!(auth.seen(b"viewer-token"), Some(0));
        assert_eq!(auth.seen(b"admin-tokem"), None);
        drop(accepted);
        // Another Auth (a reload's) starts with nothing remembered.
        let other = Auth::from_tokens(&[]);
        assert_eq!(other.check("admin-token"), None);
        assert!(read(&other.accepted).is_empty());
    }

    #[test]
    fn roles_per_route() {
        use crate::api::routes::route;
        let role = |m: &str, p: &str| required_role(&route(m, p).unwrap());
        assert_eq!(role("GET", "/api/v1/compute/instances"), Role::Viewer);
        assert_eq!(role("HEAD", "/api/v1/compute/instances"), Role::Viewer);
        assert_eq!(
            role("GET", "/api/v1/compute/instances/x/usage"),
            Role::Viewer
        );
        assert_eq!(
            role("PUT", "/api/v1/compute/instances/x/stop"),
            Role::Operator
        );
        assert_eq!(
            role("PUT", "/api/v1/compute/instances/x/pause"),
            Role::Operator
        );
        assert_eq!(role("PUT", "/api/v1/compute/instances/x"), Role::Admin);
        // an id that reads like an action is still an update
        assert_eq!(role("PUT", "/api/v1/compute/instances/start"), Role::Admin);
        assert_eq!(role("POST", "/api/v1/compute/instances"), Role::Admin);
        assert_eq!(role("DELETE", "/api/v1/compute/instances/x"), Role::Admin);
        assert_eq!(role("POST", "/api/v1/compute/backends/reload"), Role::Admin);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[test]
    fn generated_token_is_written_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("unicompute-auth-{}", generate()));
        let config = AuthConfig {
            tokens: vec![],
            token_file: dir.join("admin.token"),
        };
        let a = Auth::from_config(&config).unwrap();
        let token = std::fs::read_to_string(&config.token_file).unwrap();
        let mode = std::fs::metadata(&config.token_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(a.check(token.trim()).unwrap().1, Role::Admin);
        let b = Auth::from_config(&config).unwrap();
        assert!(b.check(token.trim()).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
