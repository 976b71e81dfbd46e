//! What verge does with a body sent with GET or HEAD, per the route's `get_body` policy (pure).
//!
//! A shared cache keys GET and HEAD without their body, and RFC 9110 §9.3.1 gives such a body
//! no meaning; an origin that read it anyway could let one client's body decide what every
//! other client is served from cache. So by default the body is read (to keep the connection
//! in step) and thrown away, and the origin gets the request without it.

use crate::config::GetBodyPolicy;
use http::Method;

/// The action for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyAction {
    /// Pass the body (if any) to the origin as usual.
    Forward,
    /// Read and discard the body; send the origin `Content-Length: 0`.
    Drop,
    /// Answer 400 and close the connection.
    Reject,
}

/// Decide for a request with `method`, which carries a body when `has_body`.
pub fn action(method: &Method, has_body: bool, policy: GetBodyPolicy) -> BodyAction {
    if !has_body || !matches!(*method, Method::GET | Method::HEAD) {
        return BodyAction::Forward;
    }
    match policy {
        GetBodyPolicy::Drop => BodyAction::Drop,
        GetBodyPolicy::Reject => BodyAction::Reject,
        GetBodyPolicy::Forward => BodyAction::Forward,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_bodies_are_touched() {
        use BodyAction::*;
        let drop = GetBodyPolicy::Drop;
        assert_eq!(action(&Method::GET, true, drop), Drop);
        assert_eq!(action(&Method::HEAD, true, drop), Drop);
        assert_eq!(action(&Method::GET, false, drop), Forward);
        assert_eq!(action(&Method::POST, true, drop), Forward);
        assert_eq!(action(&Method::GET, true, GetBodyPolicy::Reject), Reject);
        assert_eq!(action(&Method::HEAD, false, GetBodyPolicy::Reject), Forward);
        assert_eq!(action(&Method::GET, true, GetBodyPolicy::Forward), Forward);
    }
}
