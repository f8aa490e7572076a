//! The response body of the layer's services: the inner service's body, or a rejection's.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

/// The body of a response from [`ApiKeyService`](crate::service::ApiKeyService) or
/// [`RequireScope`](crate::require::RequireScope): the inner service's body unchanged, or the
/// bytes of a rejection.
#[pin_project(project = Projection)]
#[derive(Debug)]
pub struct ResponseBody<B>(#[pin] Kind<B>);

#[pin_project(project = KindProjection)]
#[derive(Debug)]
enum Kind<B> {
    Inner(#[pin] B),
    /// Boxed: a rejection allocates anyway, and inline the bytes would add 32 bytes to every
    /// response the inner service gives, moved several times on its way out. Empty once sent.
    Full(Box<Bytes>),
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody(Kind::Inner(body))
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        ResponseBody(Kind::Full(Box::new(bytes)))
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().0.project() {
            KindProjection::Inner(body) => body.poll_frame(cx),
            KindProjection::Full(bytes) => Poll::Ready(
                Some(std::mem::take(&mut **bytes))
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Inner(body) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.len() as u64),
        }
    }
}
