//! Structured logging, W3C trace context and OTLP trace export.
//!
//! Logs go to stderr, `pretty` or `json`, and every line logged while serving a request carries
//! the request's `request_id` and `trace_id` (they are fields of the request span). An incoming
//! `traceparent` is continued; the response carries ours so callers and downstream calls can
//! join the trace. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are exported over OTLP/HTTP.

use std::sync::OnceLock;

use http::HeaderMap;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{ConfigError, LogConfig, LogFormat};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber. Returns whether OTLP export is on.
pub fn init(cfg: &LogConfig) -> Result<bool, ConfigError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => {
            EnvFilter::try_new(&s).map_err(|e| ConfigError(format!("RUST_LOG: {e}")))?
        }
        // PostgreSQL's notices ("relation … already exists, skipping" on every start) are
        // noise at INFO: shown from `debug` on.
        _ => {
            let quiet = !["debug", "trace"].iter().any(|l| cfg.level.contains(l));
            let directives = if quiet {
                format!("{},sqlx::postgres::notice=warn", cfg.level)
            } else {
                cfg.level.clone()
            };
            EnvFilter::try_new(directives)
                .map_err(|e| ConfigError(format!("key `log.level`: {e}")))?
        }
    };
    // Colour only for a person at a terminal (and never with NO_COLOR): a log file or a
    // collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let fmt = match cfg.format {
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => fmt.compact().boxed(),
    };
    let otel = otlp_layer()?;
    let enabled = otel.is_some();
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| ConfigError(format!("logging already initialised: {e}")))?;
    Ok(enabled)
}

fn otlp_layer<S>() -> Result<Option<impl Layer<S>>, ConfigError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    if !configured {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| ConfigError(format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}")))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("mortar")
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("mortar");
    let _ = PROVIDER.set(provider);
    Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer)))
}

/// Whether spans are exported (and so carry OpenTelemetry ids).
pub fn otlp_enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Flushes and stops the exporter (at shutdown).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.shutdown()
    {
        eprintln!("otlp exporter shutdown: {e}");
    }
}

/// A W3C trace context: the trace we belong to and our own span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The caller's span, when the request carried a valid `traceparent`.
    pub parent_id: Option<u64>,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// Continues the caller's trace from `traceparent`, or starts a new one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let incoming = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        match incoming {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                parent_id: Some(parent),
                span_id: nonzero_u64(),
                sampled: flags & 1 == 1,
            },
            None => Self {
                trace_id: u128::from(nonzero_u64()) << 64 | u128::from(fastrand::u64(..)),
                parent_id: None,
                span_id: nonzero_u64(),
                sampled: true,
            },
        }
    }

    /// The `traceparent` value naming our span, for responses and downstream calls.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// [`Self::traceparent`] as a header value, written without a formatter or a `String`.
    pub fn traceparent_header(&self) -> http::HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let mut put = |at: usize, digits: usize, v: u128| {
            for i in 0..digits {
                buf[at + i] = HEX[(v >> (4 * (digits - 1 - i)) & 0xf) as usize];
            }
        };
        put(3, 32, self.trace_id);
        put(36, 16, u128::from(self.span_id));
        put(53, 2, u128::from(self.sampled));
        http::HeaderValue::from_bytes(&buf).expect("hex digits and dashes")
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// Links `span` to this context for OTLP export; with export on, adopts the span's ids so
    /// logs, responses and exported traces agree.
    pub fn attach(&mut self, span: &tracing::Span) {
        if !otlp_enabled() {
            return;
        }
        if let Some(parent) = self.parent_id {
            let flags = if self.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let remote = SpanContext::new(
                TraceId::from(self.trace_id),
                SpanId::from(parent),
                flags,
                true,
                TraceState::default(),
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        let ctx = span.context();
        let sc = ctx.span().span_context().clone();
        if sc.is_valid() {
            self.trace_id = u128::from_be_bytes(sc.trace_id().to_bytes());
            self.span_id = u64::from_be_bytes(sc.span_id().to_bytes());
            self.sampled = sc.is_sampled();
        }
    }
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

/// Parses `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (all-zero ids are invalid).
fn parse_traceparent(s: &str) -> Option<(u128, u64, u8)> {
    let mut parts = s.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| {
        p.len() == n && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let parent = u64::from_str_radix(parent, 16).ok().filter(|p| *p != 0)?;
    Some((trace, parent, u8::from_str_radix(flags, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_traceparent() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let ctx = TraceContext::from_headers(&h);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id, Some(0x00f0_67aa_0ba9_02b7));
        assert_ne!(ctx.span_id, 0x00f0_67aa_0ba9_02b7);
        let tp = ctx.traceparent();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"));
    }

    #[test]
    fn rejects_invalid_traceparents() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn starts_a_new_trace_without_header() {
        let a = TraceContext::from_headers(&HeaderMap::new());
        let b = TraceContext::from_headers(&HeaderMap::new());
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(a.parent_id, None);
        assert_eq!(a.traceparent().len(), 55);
        assert_eq!(
            a.traceparent_header().to_str().unwrap(),
            a.traceparent(),
            "the header and the string agree"
        );
    }
}
