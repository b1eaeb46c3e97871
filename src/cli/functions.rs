//! `fcsup functions push -f s.yaml --etcd …`: loads a file as `serve` does (variables, FC 2.0,
//! templates) and writes each function's props into etcd for node mode; and the `--etcd` flags
//! `serve` shares.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use fcsup::config::Config;
use fcsup::etcd::{props, Access, Store, DEFAULT_PREFIX};

/// Node mode's flags on `serve`: where etcd is.
#[derive(clap::Args, Clone, Default)]
pub struct EtcdArgs {
    /// Node mode: read the functions from etcd and follow its changes (comma-separated
    /// `http://host:port` endpoints; no TLS). Not with -f.
    #[arg(long = "etcd", value_name = "URL[,URL…]", env = "FCSUP_ETCD", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// The key prefix the functions live under (`<prefix>/functions/<name>`).
    #[arg(long, default_value = DEFAULT_PREFIX, env = "FCSUP_ETCD_PREFIX")]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub user: EtcdUser,
}

/// The etcd user fcsup signs in as when etcd has authentication on (`etcdctl auth enable`).
#[derive(clap::Args, Clone, Default)]
pub struct EtcdUser {
    /// The etcd user (with --etcd-password-file).
    #[arg(long, value_name = "USER", env = "FCSUP_ETCD_USER", requires = "etcd_password_file")]
    etcd_user: Option<String>,
    /// A file holding the etcd user's password (trailing newline stripped; must not be
    /// readable by other users).
    #[arg(long, value_name = "FILE", env = "FCSUP_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
}

impl EtcdUser {
    fn user(&self) -> Result<Option<(String, String)>> {
        let (Some(user), Some(file)) = (&self.etcd_user, &self.etcd_password_file) else { return Ok(None) };
        Ok(Some((user.clone(), fcsup::api::AdminToken::read_secret(file).context("--etcd-password-file")?)))
    }
}

impl EtcdArgs {
    /// Where etcd is and who fcsup is there.
    pub fn access(&self) -> Result<Access> {
        Ok(Access { endpoints: self.endpoints.clone(), prefix: self.etcd_prefix.clone(), user: self.user.user()? })
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write the functions of a file into etcd, in one transaction (node mode). Relative paths
    /// are made absolute against the file's directory: the code must be at that path on every
    /// node (a shared mount, or the same deployment everywhere).
    Push(PushArgs),
}

#[derive(clap::Args)]
struct PushArgs {
    /// The s.yaml (functions under resources.<name>.props), read as `serve -f` reads it.
    #[arg(short = 'f', long = "file", default_value = "s.yaml")]
    file: PathBuf,
    /// etcd endpoints (comma-separated `http://host:port`).
    #[arg(long = "etcd", value_name = "URL[,URL…]", env = "FCSUP_ETCD", value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The key prefix the functions live under.
    #[arg(long, default_value = DEFAULT_PREFIX, env = "FCSUP_ETCD_PREFIX")]
    etcd_prefix: String,
    #[command(flatten)]
    user: EtcdUser,
    /// Also delete the functions etcd holds that the file does not define.
    #[arg(long)]
    prune: bool,
}

pub async fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Push(a) => push(a).await,
    }
}

async fn push(args: PushArgs) -> Result<()> {
    let config = Config::load(&args.file)?;
    if config.global.max_instances.is_some() || config.global.code_cache.is_some() {
        eprintln!("note: the file's top-level fcsup: settings are not pushed; in node mode each node keeps its own defaults");
    }
    let mut functions = BTreeMap::new();
    for (name, value) in &config.props {
        let mut value = value.clone();
        if let Some(m) = value.as_object_mut() {
            // The key is the name: `serve` takes a key's name over the value's.
            m.remove("functionName");
        }
        props::absolute_paths(&mut value, &config.base);
        functions.insert(name.clone(), value.to_string());
    }
    if functions.is_empty() {
        bail!("{}: no function to push", args.file.display());
    }
    let access = Access { endpoints: args.endpoints.clone(), prefix: args.etcd_prefix.clone(), user: args.user.user()? };
    let store = Store::connect(&access).await?;
    let pushed = store.push(&functions, args.prune).await.context("push refused; nothing was written")?;
    println!("pushed {} function(s) at etcd revision {}: {}", pushed.written.len(), pushed.revision, pushed.written.join(", "));
    if !pushed.pruned.is_empty() {
        println!("pruned {}: {}", pushed.pruned.len(), pushed.pruned.join(", "));
    }
    Ok(())
}
