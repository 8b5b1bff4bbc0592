//! The proxy-wasm adapter. It only moves bytes and headers between the proxy and
//! `consentry-core`, which makes every decision.
//!
//! Envoy facts this code respects (see the project's host notes): a header map can
//! be read only in its own callback or while that callback is paused, so the request
//! is read once, whole, in `on_http_request_headers`; repeated headers are read as
//! pairs, never by first-value lookup; a replaced body needs `content-length` fixed
//! here; and a header value may hold non-UTF-8 bytes, so headers are read as bytes
//! (the SDK's string form would panic, and a panic is a trap that drops the request).

mod host;

use std::rc::Rc;

use consentry_core::http::{
    Connection, HeaderEdits, Headers, LocalReply, PeerCertificate, RequestHead,
};
use consentry_core::problem::{self, Code};
use consentry_core::{BodyAction, Exchange, Plugin, RequestAction, ResponseAction};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use host::ProxyHost;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// One filter instance (one per plugin configuration per worker).
#[derive(Default)]
struct Root {
    plugin: Option<Rc<Plugin>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let mut host = ProxyHost;
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Plugin::from_json(&bytes) {
            Ok(plugin) => {
                self.plugin = Some(Rc::new(plugin));
                host.info("consentry: configuration loaded");
                true
            }
            Err(errors) => {
                // The previous configuration (if any) is dropped too: the plugin
                // never runs half-configured, and unconfigured it refuses everything.
                self.plugin = None;
                for e in &errors.0 {
                    host.error(&format!("consentry: configuration refused: {e}"));
                }
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            plugin: self.plugin.clone(),
            exchange: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream.
struct Stream {
    /// `None` when the configuration was refused: every request is then refused.
    plugin: Option<Rc<Plugin>>,
    exchange: Option<Exchange>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut host = ProxyHost;
        let Some(plugin) = self.plugin.clone() else {
            let mut random = [0u8; 16];
            consentry_core::host::Host::fill_random(&mut host, &mut random);
            let id = problem::request_id_from_random(random);
            let reply = problem::reply(
                Code::DependencyUnavailable,
                consentry_core::config::DEFAULT_PROBLEM_TYPE_BASE,
                &id,
                None,
            );
            self.send_reply(&reply);
            return Action::Pause;
        };
        let head = self.read_request_head(end_of_stream);
        let (exchange, action) = plugin.on_request_headers(&head, &mut host);
        self.exchange = Some(exchange);
        match action {
            RequestAction::Reply(reply) => {
                self.send_reply(&reply);
                Action::Pause
            }
            RequestAction::Forward(edits) => {
                for name in &edits.remove {
                    self.remove_http_request_header(name);
                }
                for (name, value) in &edits.set {
                    self.set_http_request_header(name, Some(value));
                }
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let (Some(plugin), Some(mut exchange)) = (self.plugin.clone(), self.exchange.take()) else {
            return Action::Continue;
        };
        let headers: Headers = self.get_http_response_headers_bytes().into_iter().collect();
        let status = headers
            .get_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let action = plugin.on_response_headers(
            &mut exchange,
            status,
            &headers,
            end_of_stream,
            &mut ProxyHost,
        );
        self.exchange = Some(exchange);
        match action {
            ResponseAction::Hold => Action::Pause,
            ResponseAction::Pass(edits) => {
                self.apply_response_edits(&edits);
                Action::Continue
            }
            ResponseAction::Reply(reply) => {
                self.send_reply(&reply);
                Action::Pause
            }
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(plugin), Some(mut exchange)) = (self.plugin.clone(), self.exchange.take()) else {
            return Action::Continue;
        };
        let mut action = plugin.on_response_body_progress(&mut exchange, body_size, &mut ProxyHost);
        if end_of_stream && action == BodyAction::Buffer {
            let body = self
                .get_http_response_body(0, body_size)
                .unwrap_or_default();
            action = plugin.on_response_body(&mut exchange, &body, &mut ProxyHost);
        }
        self.exchange = Some(exchange);
        match action {
            BodyAction::Pass => Action::Continue,
            BodyAction::Buffer => Action::Pause,
            BodyAction::Release { body, headers } => {
                self.set_http_response_body(0, body_size, &body);
                self.apply_response_edits(&headers);
                Action::Continue
            }
            BodyAction::Reply(reply) => {
                self.send_reply(&reply);
                Action::Pause
            }
        }
    }
}

impl Stream {
    fn read_request_head(&self, end_of_stream: bool) -> RequestHead {
        let headers: Headers = self.get_http_request_headers_bytes().into_iter().collect();
        let pseudo = |name: &str| headers.get_str(name).unwrap_or_default().to_owned();
        RequestHead {
            method: pseudo(":method"),
            path: pseudo(":path"),
            authority: pseudo(":authority"),
            connection: self.read_connection(),
            end_of_stream,
            headers,
        }
    }

    fn read_connection(&self) -> Connection {
        let text = |path: Vec<&str>| {
            self.get_property(path)
                .and_then(|b| String::from_utf8(b).ok())
        };
        let mtls = self
            .get_property(vec!["connection", "mtls"])
            .is_some_and(|b| b.first() == Some(&1));
        let peer = mtls.then(|| PeerCertificate {
            uri_san: text(vec!["connection", "uri_san_peer_certificate"]),
            sha256_hex: text(vec!["connection", "sha256_peer_certificate_digest"]),
            pem: text(vec!["connection", "peer_certificate"]),
        });
        Connection {
            source_address: text(vec!["source", "address"]),
            mtls,
            peer,
        }
    }

    fn apply_response_edits(&self, edits: &HeaderEdits) {
        for name in &edits.remove {
            self.remove_http_response_header(name);
        }
        for (name, value) in &edits.set {
            self.set_http_response_header(name, Some(value));
        }
    }

    fn send_reply(&self, reply: &LocalReply) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        self.send_http_response(u32::from(reply.status), headers, Some(&reply.body));
    }
}
