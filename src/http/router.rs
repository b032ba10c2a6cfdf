//! The API's router: a request path is split once on `/` and compared
//! segment by segment with each route's pattern; the matching route's
//! handler for the request's method takes the request.
//!
//! actix-web matches every pattern that has a parameter with a regular
//! expression (regex-lite's backtracking-free PikeVM), trying the patterns
//! one after another: on the durable add-item path that was 13% of the
//! HTTP workers' time. The API's patterns need no regular expression: a
//! segment is a constant or a parameter, and a parameter takes what
//! actix's `{name}` takes, one non-empty segment. The handlers still read
//! their parameters with `web::Path`.
//!
//! The router answers `OPTIONS` with 204 and an `Allow` header, a method
//! the route does not take with the JSON 405 and the same header, `HEAD`
//! wherever `GET` is taken, and any other path with the JSON 404. It is
//! installed as the app's default service, so routes an embedding
//! application registers with actix-web itself are matched first.
//!
//! Every request it takes is observed into the node's metrics (the
//! `ApiState`'s, when the app has one): method, the route's pattern (never
//! the raw path), status and duration.

use actix_service::{Service, ServiceFactory};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{ALLOW, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{Error, HttpResponse, ResponseError};
use futures_util::future::LocalBoxFuture;

use super::{ApiError, ApiState};
use crate::metrics::{HttpLabels, Metrics};

/// The most parameters a pattern may have.
const MAX_PARAMS: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Const(&'static str),
    Param(&'static str),
}

/// A pattern such as `/carts/{id}/items`, split into its segments.
fn parse(pattern: &'static str) -> Vec<Segment> {
    let rest = pattern
        .strip_prefix('/')
        .unwrap_or_else(|| panic!("route pattern {pattern:?} must start with '/'"));
    let segments: Vec<Segment> = rest
        .split('/')
        .map(|segment| match segment.strip_prefix('{') {
            Some(name) => Segment::Param(
                name.strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed parameter in {pattern:?}")),
            ),
            None => Segment::Const(segment),
        })
        .collect();
    assert!(
        segments
            .iter()
            .filter(|s| matches!(s, Segment::Param(_)))
            .count()
            <= MAX_PARAMS,
        "route pattern {pattern:?} has more than {MAX_PARAMS} parameters"
    );
    segments
}

/// A matched parameter: its name and its byte range in the path.
type Captured = (&'static str, usize, usize);

/// Where `path` matches `segments`: the parameters (the first of the
/// array, as many as the count says).
fn matches(segments: &[Segment], path: &str) -> Option<([Captured; MAX_PARAMS], usize)> {
    let rest = path.strip_prefix('/')?;
    let mut found = [("", 0, 0); MAX_PARAMS];
    let mut count = 0;
    let mut start = 1;
    let mut pieces = rest.split('/');
    for segment in segments {
        let piece = pieces.next()?;
        match segment {
            Segment::Const(text) if *text == piece => {}
            Segment::Const(_) => return None,
            Segment::Param(_) if piece.is_empty() => return None,
            Segment::Param(name) => {
                found[count] = (name, start, start + piece.len());
                count += 1;
            }
        }
        start += piece.len() + 1;
    }
    if pieces.next().is_some() {
        return None;
    }
    Some((found, count))
}

/// One pattern and the handlers of the methods it takes.
struct RouteDef {
    pattern: &'static str,
    segments: Vec<Segment>,
    methods: Vec<(Method, actix_web::Route)>,
}

/// The route table; a service factory, so one is built per HTTP worker.
#[derive(Default)]
pub struct ApiRouter {
    routes: Vec<RouteDef>,
}

impl ApiRouter {
    pub fn new() -> ApiRouter {
        ApiRouter::default()
    }

    /// `method pattern` runs `handler` (an actix-web handler: its
    /// extractors, `web::Path` among them, work as on any actix route).
    pub fn route<F, Args>(mut self, method: Method, pattern: &'static str, handler: F) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        let segments = parse(pattern);
        let route = actix_web::web::route().to(handler);
        match self.routes.iter_mut().find(|r| r.segments == segments) {
            Some(existing) => {
                assert!(
                    existing.methods.iter().all(|(m, _)| *m != method),
                    "{method} {pattern} registered twice"
                );
                existing.methods.push((method, route));
            }
            None => self.routes.push(RouteDef {
                pattern,
                segments,
                methods: vec![(method, route)],
            }),
        }
        self
    }
}

/// The `Allow` header of a route taking `methods`: them in order, `HEAD`
/// where `GET` is taken, and `OPTIONS`.
fn allow_header(methods: &[(Method, actix_web::Route)]) -> HeaderValue {
    let mut names: Vec<&str> = methods.iter().map(|(m, _)| m.as_str()).collect();
    if methods.iter().any(|(m, _)| *m == Method::GET) {
        names.push("HEAD");
    }
    names.push("OPTIONS");
    HeaderValue::from_str(&names.join(", ")).expect("method names are header-safe")
}

impl ServiceFactory<ServiceRequest> for ApiRouter {
    type Response = ServiceResponse;
    type Error = Error;
    type Config = ();
    type Service = RouterService;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<RouterService, ()>>;

    fn new_service(&self, _: ()) -> Self::Future {
        let pending: Vec<_> = self
            .routes
            .iter()
            .map(|route| {
                let services: Vec<_> = route
                    .methods
                    .iter()
                    .map(|(method, handler)| (method.clone(), handler.new_service(())))
                    .collect();
                (
                    route.pattern,
                    route.segments.clone(),
                    allow_header(&route.methods),
                    services,
                )
            })
            .collect();
        Box::pin(async move {
            let mut routes = Vec::with_capacity(pending.len());
            for (pattern, segments, allow, services) in pending {
                let mut methods = Vec::with_capacity(services.len());
                for (method, service) in services {
                    methods.push((method, service.await?));
                }
                routes.push(Live {
                    pattern,
                    segments,
                    allow,
                    methods,
                });
            }
            Ok(RouterService { routes })
        })
    }
}

/// A handler's service (actix-web does not name the type).
type HandlerService = <actix_web::Route as ServiceFactory<ServiceRequest>>::Service;

/// A route of a running worker: its handlers' services.
struct Live {
    pattern: &'static str,
    segments: Vec<Segment>,
    allow: HeaderValue,
    methods: Vec<(Method, HandlerService)>,
}

/// One HTTP worker's router.
pub struct RouterService {
    routes: Vec<Live>,
}

impl Service<ServiceRequest> for RouterService {
    type Response = ServiceResponse;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<ServiceResponse, Error>>;

    actix_service::always_ready!();

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let metrics = req
            .app_data::<actix_web::web::Data<ApiState>>()
            .map(|state| state.metrics.clone());
        let method_label = method_label(req.method());
        let path = req.match_info().unprocessed();
        let Some((route, params, count)) = self
            .routes
            .iter()
            .find_map(|route| matches(&route.segments, path).map(|(p, n)| (route, p, n)))
        else {
            let refusal = ApiError::new(StatusCode::NOT_FOUND, "no such route");
            return refuse(
                req,
                refusal,
                None,
                observe(metrics, method_label, "unmatched"),
            );
        };
        let method = if req.method() == Method::HEAD {
            Method::GET
        } else {
            req.method().clone()
        };
        let Some((_, service)) = route.methods.iter().find(|(m, _)| *m == method) else {
            if req.method() == Method::OPTIONS {
                let mut response = HttpResponse::NoContent().finish();
                response.headers_mut().insert(ALLOW, route.allow.clone());
                if let Some(observe) = observe(metrics, method_label, route.pattern) {
                    observe(response.status());
                }
                return Box::pin(std::future::ready(Ok(req.into_response(response))));
            }
            let allow = route.allow.to_str().unwrap_or_default();
            let refusal = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method not allowed on this route; allowed: {allow}"),
            )
            .with_code("method_not_allowed");
            let observe = observe(metrics, method_label, route.pattern);
            return refuse(req, refusal, Some(route.allow.clone()), observe);
        };
        let values: Vec<(&'static str, String)> = params[..count]
            .iter()
            .map(|&(name, start, end)| (name, path[start..end].to_owned()))
            .collect();
        for (name, value) in values {
            // What actix's own router records for a `{name}` segment.
            req.match_info_mut().add_static(name, value);
        }
        let span = tracing::debug_span!(
            "http.request",
            http.method = method_label,
            http.route = route.pattern,
            http.status_code = tracing::field::Empty,
        );
        let answer = {
            let _entered = span.enter();
            service.call(req)
        };
        let observe = observe(metrics, method_label, route.pattern);
        if observe.is_none() && span.is_disabled() {
            return answer;
        }
        Box::pin(tracing::Instrument::instrument(
            async move {
                let answer = answer.await;
                let status = match &answer {
                    Ok(response) => response.status(),
                    Err(error) => error.as_response_error().status_code(),
                };
                tracing::Span::current().record("http.status_code", status.as_u16());
                if let Some(observe) = observe {
                    observe(status);
                }
                answer
            },
            span,
        ))
    }
}

/// A request's method as a metric label (the few the API knows; `other`
/// for the rest, so a client cannot make new series).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Records a request of `method` on `route` into `metrics` once its status
/// is known, timed from now.
fn observe(
    metrics: Option<std::sync::Arc<Metrics>>,
    method: &'static str,
    route: &'static str,
) -> Option<impl FnOnce(StatusCode)> {
    let metrics = metrics?;
    let started = std::time::Instant::now();
    Some(move |status: StatusCode| {
        let labels = HttpLabels {
            method,
            route,
            status: status.as_u16(),
        };
        metrics.http_request(&labels, started.elapsed());
    })
}

fn refuse(
    req: ServiceRequest,
    refusal: ApiError,
    allow: Option<HeaderValue>,
    observe: Option<impl FnOnce(StatusCode)>,
) -> LocalBoxFuture<'static, Result<ServiceResponse, Error>> {
    let mut response = refusal.error_response();
    if let Some(allow) = allow {
        response.headers_mut().insert(ALLOW, allow);
    }
    if let Some(observe) = observe {
        observe(response.status());
    }
    Box::pin(std::future::ready(Ok(req.into_response(response))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(pattern: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
        let (found, count) = matches(&parse(pattern), path)?;
        Some(
            found[..count]
                .iter()
                .map(|&(name, start, end)| (name, path[start..end].to_owned()))
                .collect(),
        )
    }

    #[test]
    fn segments_match_as_actix_patterns_do() {
        assert_eq!(
            captured("/carts/{id}/items/{line_id}", "/carts/c1/items/l2"),
            Some(vec![("id", "c1".into()), ("line_id", "l2".into())])
        );
        assert_eq!(captured("/carts", "/carts"), Some(vec![]));
        assert_eq!(
            captured("/carts/{id}", "/carts/x"),
            Some(vec![("id", "x".into())])
        );
        for (pattern, path) in [
            ("/carts/{id}", "/carts/"),
            ("/carts/{id}", "/carts"),
            ("/carts/{id}", "/carts/x/"),
            ("/carts/{id}", "/carts/x/items"),
            ("/carts/{id}/items", "/carts//items"),
            ("/carts/{id}/items", "/carts/x/itemz"),
            ("/carts", "/carts/"),
            ("/carts", "carts"),
            ("/carts", "/cart"),
            ("/cart", "/carts"),
        ] {
            assert_eq!(captured(pattern, path), None, "{pattern} {path}");
        }
    }

    #[test]
    #[should_panic(expected = "must start with '/'")]
    fn a_pattern_without_a_leading_slash_is_refused() {
        parse("carts");
    }

    #[test]
    fn allow_names_head_with_get_and_options_always() {
        let router = ApiRouter::new()
            .route(Method::GET, "/a/{x}", || async { "" })
            .route(Method::PUT, "/a/{x}", || async { "" })
            .route(Method::POST, "/b", || async { "" });
        assert_eq!(router.routes.len(), 2);
        assert_eq!(
            allow_header(&router.routes[0].methods),
            "GET, PUT, HEAD, OPTIONS"
        );
        assert_eq!(allow_header(&router.routes[1].methods), "POST, OPTIONS");
    }
}
