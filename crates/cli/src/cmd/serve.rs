//! `telepound serve` and `telepound migrate`.

use anyhow::Context;
use telepound_server::RawConfig;

use crate::args::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging("telepound_server=info,telepound=info");
    let file = match &args.config {
        Some(path) => RawConfig::from_toml_file(path).map_err(anyhow::Error::msg)?,
        None => RawConfig::default(),
    };
    let flags = RawConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        database: args.database,
        migrate: args.no_migrate.then_some(false),
        min_argon2: args.min_argon2,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_self_signed: args.tls_self_signed.then_some(true),
        ..RawConfig::default()
    };
    let config = file.merge(flags).validate().map_err(anyhow::Error::msg)?;
    // Install the handlers before saying we listen, so a SIGTERM that
    // follows the announcement is never the default (fatal) action.
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let where_ = match &config.database {
        telepound_server::store::DatabaseUrl::Sqlite(p) => format!("data in {}", p.display()),
        telepound_server::store::DatabaseUrl::Postgres(u) => {
            format!("PostgreSQL at {}", telepound_server::config::redact_url(u))
        }
    };
    // Load (or generate) the certificate now, so a bad one fails before we
    // announce anything and clients never see a half-ready server.
    if let Some(source) = &config.tls {
        let (_, cert) =
            telepound_server::tls::server_config(source, &config.data_dir, listener.local_addr()?)?;
        println!("TLS certificate: {}", cert.display());
    }
    println!(
        "Telepound server listening on {}://{} ({where_}). Ctrl-C to stop.",
        if config.tls.is_some() { "wss" } else { "ws" },
        listener.local_addr()?
    );
    telepound_server::run(listener, config, shutdown).await
}

pub async fn migrate(database: &str, grant_to: Option<&str>) -> anyhow::Result<()> {
    init_logging("telepound_server=info");
    if !(database.starts_with("postgres://") || database.starts_with("postgresql://")) {
        anyhow::bail!(
            "migrate is for PostgreSQL (postgres://…); SQLite databases migrate when the server starts"
        );
    }
    telepound_server::store::postgres::migrate(database)
        .await
        .with_context(|| {
            format!(
                "cannot migrate {}",
                telepound_server::config::redact_url(database)
            )
        })?;
    println!("Schema is up to date.");
    if let Some(role) = grant_to {
        telepound_server::store::postgres::grant_app_role(database, role)
            .await
            .with_context(|| format!("cannot grant the application rights to {role}"))?;
        println!("Granted {role} the rights the server needs (rows only, no schema changes).");
    }
    Ok(())
}

/// Logs to stderr, filtered by RUST_LOG or `default`.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A future that completes on Ctrl-C or SIGTERM; the handlers are
/// installed before this returns. A second Ctrl-C or SIGTERM during the
/// graceful stop exits at once (what is `accepted` is on disk already).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("stop requested; stop again to exit at once");
        tokio::spawn(async move {
            #[cfg(unix)]
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("telepound: error: stopped at once (second stop request)");
            std::process::exit(1);
        });
    })
}
