//! Configuration: flags, each with an env twin (`KAIWA_*`), over an optional TOML file, over
//! defaults that let one node run with nothing else installed.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use kaiwa_actors::engine::Limits;
use serde::Deserialize;

/// Settings of `kaiwa serve`. Every field is optional here: a flag beats its env twin, which
/// beats the `--config` file, which beats the default.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "KAIWA_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "KAIWA_HOST")]
    pub host: Option<String>,
    /// Port to listen on [default: 8080].
    #[arg(long, env = "KAIWA_PORT")]
    pub port: Option<u16>,
    /// Directory of the embedded store [default: ./data].
    #[arg(long, env = "KAIWA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HS256 secret that signs client tokens [default: a development secret, with a warning].
    #[arg(long, env = "KAIWA_TOKEN_SECRET")]
    pub token_secret: Option<String>,
    /// Key of the admin API (`Authorization: Bearer <key>`) [default: dev-admin-key].
    #[arg(long, env = "KAIWA_ADMIN_KEY")]
    pub admin_key: Option<String>,
    /// HTTP worker threads [default: number of cores].
    #[arg(long, env = "KAIWA_WORKERS")]
    pub workers: Option<usize>,
    /// Largest client frame in bytes [default: 65536].
    #[arg(long, env = "KAIWA_MAX_FRAME")]
    pub max_frame: Option<usize>,
    /// Frames a connection may have queued before it is cut off as a slow consumer [default: 4096].
    #[arg(long, env = "KAIWA_OUTBOX_FRAMES")]
    pub outbox_frames: Option<usize>,
    /// Requests per second per connection [default: 2000].
    #[arg(long, env = "KAIWA_RATE_PER_SEC")]
    pub rate_per_sec: Option<u32>,
    /// Request burst per connection [default: 4000].
    #[arg(long, env = "KAIWA_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// Server ping interval in milliseconds [default: 20000].
    #[arg(long, env = "KAIWA_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,
    /// Silence after which a client is dropped, in milliseconds [default: 60000].
    #[arg(long, env = "KAIWA_PING_TIMEOUT_MS")]
    pub ping_timeout_ms: Option<u64>,
    /// Recent client message ids each conversation remembers [default: 10000].
    #[arg(long, env = "KAIWA_IDEMPOTENCY_WINDOW")]
    pub idempotency_window: Option<usize>,
    /// A user, chat or group idle this long, in milliseconds, leaves memory until its next
    /// request; 0 keeps everything loaded [default: 900000, a quarter of an hour].
    #[arg(long, env = "KAIWA_ACTOR_IDLE_MS")]
    pub actor_idle_ms: Option<u64>,
    /// Messages per segment of the embedded store's journal; a full segment is folded into the
    /// logs in redb. Segments not yet folded are also held in memory [default: 50000].
    #[arg(long, env = "KAIWA_JOURNAL_MESSAGES")]
    pub journal_messages: Option<usize>,
    /// Joins a cluster whose store and bus is this Redis (e.g. redis://127.0.0.1:6379); without
    /// it the node runs alone on its embedded store [default: none].
    #[arg(long, env = "KAIWA_REDIS_URL")]
    pub redis_url: Option<String>,
    /// This node's id in the cluster, unique among the nodes [default: the host name and port].
    #[arg(long, env = "KAIWA_NODE_ID")]
    pub node_id: Option<String>,
    /// Prefix of every Redis key and channel, so clusters can share a Redis [default: kaiwa:].
    #[arg(long, env = "KAIWA_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
}

/// Cluster settings, present when `--redis-url` is given.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub redis_url: String,
    pub node_id: String,
    pub prefix: String,
}

/// Development defaults; a node started with them says so in its log.
pub const DEV_SECRET: &str = "kaiwa-dev-secret-change-me";
pub const DEV_ADMIN_KEY: &str = "dev-admin-key";

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub token_secret: String,
    pub admin_key: String,
    pub workers: usize,
    pub limits: Limits,
    /// Messages per segment of the embedded store's journal.
    pub journal_messages: usize,
    pub cluster: Option<ClusterSettings>,
}

macro_rules! layer {
    ($top:expr, $file:expr, $($f:ident),*) => {
        $( if $top.$f.is_none() { $top.$f = $file.$f.take(); } )*
    };
}

impl ServeConfig {
    /// Reads the TOML file at `path`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Ok(toml::from_str(&text)?)
    }

    /// Applies the `--config` file under the flags and env, then the defaults.
    pub fn resolve(mut self) -> anyhow::Result<Settings> {
        if let Some(path) = self.config.clone() {
            let mut file = Self::from_file(&path)?;
            layer!(
                self,
                file,
                host,
                port,
                data_dir,
                token_secret,
                admin_key,
                workers,
                max_frame,
                outbox_frames,
                rate_per_sec,
                rate_burst,
                ping_interval_ms,
                ping_timeout_ms,
                idempotency_window,
                actor_idle_ms,
                journal_messages,
                redis_url,
                node_id,
                redis_prefix
            );
        }
        let d = Limits::default();
        let nz = |v: Option<u32>, def: NonZeroU32| v.and_then(NonZeroU32::new).unwrap_or(def);
        let limits = Limits {
            max_frame: self.max_frame.unwrap_or(d.max_frame),
            outbox_frames: self.outbox_frames.unwrap_or(d.outbox_frames),
            idempotency_window: self.idempotency_window.unwrap_or(d.idempotency_window),
            rate_per_sec: nz(self.rate_per_sec, d.rate_per_sec),
            rate_burst: nz(self.rate_burst, d.rate_burst),
            ping_interval: self
                .ping_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(d.ping_interval),
            ping_timeout: self
                .ping_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.ping_timeout),
            actor_idle: match self.actor_idle_ms {
                None => d.actor_idle,
                Some(0) => None,
                Some(ms) => Some(Duration::from_millis(ms)),
            },
        };
        let host = self.host.unwrap_or_else(|| "127.0.0.1".into());
        let port = self.port.unwrap_or(8080);
        let cluster = self.redis_url.map(|redis_url| ClusterSettings {
            redis_url,
            node_id: self.node_id.unwrap_or_else(|| {
                let h = std::env::var("HOSTNAME").unwrap_or_else(|_| host.clone());
                format!("{h}:{port}")
            }),
            prefix: self.redis_prefix.unwrap_or_else(|| "kaiwa:".into()),
        });
        Ok(Settings {
            host,
            port,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("data")),
            token_secret: self.token_secret.unwrap_or_else(|| DEV_SECRET.into()),
            admin_key: self.admin_key.unwrap_or_else(|| DEV_ADMIN_KEY.into()),
            workers: self.workers.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            }),
            limits,
            journal_messages: self
                .journal_messages
                .unwrap_or(kaiwa_actors::store::embedded::JOURNAL_MESSAGES),
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kaiwa.toml");
        std::fs::write(&path, "port = 9000\nhost = \"0.0.0.0\"\nmax_frame = 1024\n").unwrap();
        let cfg = ServeConfig {
            config: Some(path),
            port: Some(9100),
            ..Default::default()
        };
        let s = cfg.resolve().unwrap();
        assert_eq!(s.port, 9100);
        assert_eq!(s.host, "0.0.0.0");
        assert_eq!(s.limits.max_frame, 1024);
        assert_eq!(s.admin_key, DEV_ADMIN_KEY);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kaiwa.toml");
        std::fs::write(&path, "prot = 9000\n").unwrap();
        assert!(ServeConfig {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .is_err());
    }

    #[test]
    fn cluster_mode_only_with_a_redis_url() {
        assert!(ServeConfig::default().resolve().unwrap().cluster.is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kaiwa.toml");
        std::fs::write(
            &path,
            "redis_url = \"redis://127.0.0.1:7000\"\nnode_id = \"n1\"\n",
        )
        .unwrap();
        let s = ServeConfig {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let c = s.cluster.unwrap();
        assert_eq!(c.redis_url, "redis://127.0.0.1:7000");
        assert_eq!(c.node_id, "n1");
        assert_eq!(c.prefix, "kaiwa:");
    }
}
