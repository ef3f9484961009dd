//! `ragfleet admin`: users, API keys and grants — against a running node
//! (`--url`, with an admin key) or directly on a store (`--data DIR` or
//! `--store-url URL`, no node needed).
use std::path::{Path, PathBuf};

use crate::api_key::KeyArgs;

use anyhow::{bail, Context};
use clap::Subcommand;
use ragfleet_rag::store::principals::{
    hash_password, mint_key, parse_duration, time_after, ApiKeyRecord, Role,
};
use ragfleet_rag::store::Store;
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A running node (or gateway): needs an admin key. The default when
    /// neither --data nor --store-url is given: http://127.0.0.1:8080.
    #[arg(long, env = "RAGFLEET_URL", conflicts_with_all = ["data", "store_url"])]
    pub url: Option<String>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Work directly on this data directory's store (`DIR/ragfleet.db`).
    #[arg(long, conflicts_with = "store_url")]
    pub data: Option<PathBuf>,
    /// Work directly on this store (`sqlite://…` or `postgres://…`).
    #[arg(long, env = "RAGFLEET_STORE_URL")]
    pub store_url: Option<String>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Users.
    #[command(subcommand)]
    User(UserCmd),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Grant a collection (`*`: all) to a user, or withdraw it (`--revoke`).
    Grant {
        user: String,
        collection: String,
        #[arg(long)]
        revoke: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a user.
    Add {
        name: String,
        /// admin, editor or reader.
        #[arg(long, default_value = "reader")]
        role: Role,
        /// Collections to grant (repeat; `*` for all).
        #[arg(long = "collection")]
        collections: Vec<String>,
        /// Read a password for the web page's login from stdin (one line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password for the web page's login (read from stdin,
    /// one line; e.g. the bootstrap `admin`'s, to log in on the page).
    Passwd { name: String },
    /// List users.
    List,
    /// Delete a user with their keys and sessions.
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Create a key; it is printed once.
    Create {
        /// Owner (default: the admin).
        #[arg(long)]
        user: Option<String>,
        /// admin, editor or reader (at most the owner's; default the owner's).
        #[arg(long)]
        role: Option<Role>,
        /// Only these collections (repeat); must be among the owner's.
        #[arg(long = "collection")]
        collections: Vec<String>,
        /// Lifetime, like 30d, 12h.
        #[arg(long)]
        expires: Option<String>,
        /// A label.
        #[arg(long, default_value = "key")]
        name: String,
    },
    /// List keys (never the keys themselves).
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a key by id (the part after `rf_`, shown by `key list`).
    Revoke { id: String },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let out = match (&args.url, &args.data, &args.store_url) {
            (Some(url), _, _) => remote(&args, url).await?,
            (None, Some(dir), _) => {
                let store = ragfleet_rag::store::open(&Default::default(), dir)
                    .await
                    .with_context(|| format!("opening the store in {}", dir.display()))?;
                // A new store gets its admin (and DIR/admin.key) as a node would.
                ragfleet_node::auth::bootstrap(store.as_ref(), dir)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                direct(store.as_ref(), &args.command).await?
            }
            (None, None, Some(url)) => {
                let cfg = ragfleet_rag::StoreConfig {
                    url: Some(url.clone()),
                    ..Default::default()
                };
                let store = ragfleet_rag::store::open(&cfg, Path::new("."))
                    .await
                    .with_context(|| format!("opening {}", ragfleet_rag::store::redact_url(url)))?;
                if let Some(key) = store.bootstrap_admin().await? {
                    eprintln!("ragfleet admin: created the admin API key (shown once):\n  {key}");
                }
                direct(store.as_ref(), &args.command).await?
            }
            // Like `ask`: the local node (or `up`'s gateway) by default.
            (None, None, None) => remote(&args, "http://127.0.0.1:8080").await?,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    })
}

async fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.chars().count() < 8 {
        bail!("a password needs at least 8 characters");
    }
    Ok(pw)
}

/// The admin commands straight on a store.
async fn direct(store: &dyn Store, cmd: &Cmd) -> anyhow::Result<Value> {
    Ok(match cmd {
        Cmd::User(UserCmd::Add {
            name,
            role,
            collections,
            password_stdin,
        }) => {
            let hash = if *password_stdin {
                Some(hash_password(&read_password().await?)?)
            } else {
                None
            };
            json!(
                store
                    .create_user(name, *role, hash.as_deref(), collections)
                    .await?
            )
        }
        Cmd::User(UserCmd::Passwd { name }) => {
            let hash = hash_password(&read_password().await?)?;
            if !store.update_user(name, None, Some(&hash)).await? {
                bail!("no user {name:?}");
            }
            json!({"user": name, "password": "set"})
        }
        Cmd::User(UserCmd::List) => json!({"users": store.list_users().await?}),
        Cmd::User(UserCmd::Rm { name }) => {
            if !store.delete_user(name).await? {
                bail!("no user {name:?}");
            }
            json!({"deleted": name})
        }
        Cmd::Grant {
            user,
            collection,
            revoke,
        } => {
            if !store.set_grant(user, collection, !revoke).await? {
                bail!("no user {user:?}");
            }
            json!(store.get_user(user).await?)
        }
        Cmd::Key(KeyCmd::Create {
            user,
            role,
            collections,
            expires,
            name,
        }) => {
            let owner_name = user.clone().unwrap_or_else(|| "admin".into());
            let owner = store
                .get_user(&owner_name)
                .await?
                .with_context(|| format!("no user {owner_name:?}"))?;
            let role = role.unwrap_or(owner.role);
            if role > owner.role {
                bail!(
                    "a key cannot have more than its owner's role ({owner_name} has {})",
                    owner.role
                );
            }
            let minted = mint_key();
            let record = ApiKeyRecord {
                id: minted.id.clone(),
                user: owner.name,
                name: name.clone(),
                role,
                collections: (!collections.is_empty()).then(|| collections.clone()),
                created_at: ragfleet_rag::store::now_rfc3339(),
                expires_at: expires
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .map(time_after),
                last_used: None,
                revoked_at: None,
            };
            store.create_api_key(&record, &minted.hash).await?;
            json!({"key": minted.plaintext, "record": record})
        }
        Cmd::Key(KeyCmd::List { user }) => {
            json!({"keys": store.list_api_keys(user.as_deref()).await?})
        }
        Cmd::Key(KeyCmd::Revoke { id }) => {
            if !store.revoke_api_key(id).await? {
                bail!("no active key {id:?}");
            }
            json!({"revoked": id})
        }
    })
}

/// The admin commands over HTTP (the node's admin routes).
async fn remote(args: &Args, url: &str) -> anyhow::Result<Value> {
    let base = url.trim_end_matches('/');
    let http = args.key.client()?;
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let req = match &args.command {
        Cmd::User(UserCmd::Add {
            name,
            role,
            collections,
            password_stdin,
        }) => {
            let mut body = json!({"name": name, "role": role, "collections": collections});
            if *password_stdin {
                body["password"] = json!(read_password().await?);
            }
            http.post(format!("{base}/api/v1/admin/users")).json(&body)
        }
        Cmd::User(UserCmd::Passwd { name }) => http
            .patch(format!("{base}/api/v1/admin/users/{}", enc(name)))
            .json(&json!({"password": read_password().await?})),
        Cmd::User(UserCmd::List) => http.get(format!("{base}/api/v1/admin/users")),
        Cmd::User(UserCmd::Rm { name }) => {
            http.delete(format!("{base}/api/v1/admin/users/{}", enc(name)))
        }
        Cmd::Grant {
            user,
            collection,
            revoke,
        } => {
            let u = format!(
                "{base}/api/v1/admin/users/{}/grants/{}",
                enc(user),
                enc(collection)
            );
            if *revoke {
                http.delete(u)
            } else {
                http.put(u)
            }
        }
        Cmd::Key(KeyCmd::Create {
            user,
            role,
            collections,
            expires,
            name,
        }) => {
            let mut body = json!({"name": name});
            if let Some(u) = user {
                body["user"] = json!(u);
            }
            if let Some(r) = role {
                body["role"] = json!(r);
            }
            if !collections.is_empty() {
                body["collections"] = json!(collections);
            }
            if let Some(e) = expires {
                body["expires_in"] = json!(e);
            }
            http.post(format!("{base}/api/v1/admin/keys")).json(&body)
        }
        Cmd::Key(KeyCmd::List { user }) => {
            let mut r = http.get(format!("{base}/api/v1/admin/keys"));
            if let Some(u) = user {
                r = r.query(&[("user", u)]);
            }
            r
        }
        Cmd::Key(KeyCmd::Revoke { id }) => {
            http.delete(format!("{base}/api/v1/admin/keys/{}", enc(id)))
        }
    };
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the node at {base}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{}", crate::ask::error_message(status.as_u16(), &text));
    }
    Ok(if text.trim().is_empty() {
        json!({"ok": true})
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    })
}
