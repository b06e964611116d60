//! Image routes: the image list, importing a variant, and blobs streamed to agents by digest.

use bytes::Buf;
use futures::Stream;
use warp::http::{header, Method, StatusCode};

use super::{json, only, Answer, ApiError, ApiState, Request};
use crate::images::{self, ImageError, ImageStore};

pub(super) async fn list_images(state: &ApiState, req: &Request) -> Answer {
    only(req, &[Method::GET])?;
    let items = ImageStore::list(&state.objects).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "items": items })))
}

pub(super) async fn import_image<S, B>(
    state: &ApiState,
    req: &Request,
    name: &str,
    tag: &str,
    arch: &str,
    body: S,
) -> Answer
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    only(req, &[Method::PUT])?;
    texu_api::ImageRef::parse(&format!("{name}:{tag}"))
        .map_err(|e| ApiError::bad_request(format!("image {name}:{tag}: {e}")))?;
    let arch: texu_api::Arch = arch.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "unknown architecture {arch:?}: expected amd64, arm64, armhf or armel"
        ))
    })?;
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > images::MAX_IMAGE_BYTES) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ImageError::TooLarge.to_string(),
        ));
    }
    let variant = state
        .images
        .import(name, tag, arch, body)
        .await
        .map_err(|e| match e {
            ImageError::TooLarge => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            ImageError::Upload(_) => ApiError::bad_request(e.to_string()),
            ImageError::Object(o) => o.into(),
            _ => ApiError::internal(e.to_string()),
        })?;
    Ok(json(StatusCode::OK, &variant))
}

/// Streams a blob by digest: agents download images this way and verify the digest.
pub(super) async fn blob(state: &ApiState, req: &Request, digest: &str) -> Answer {
    only(req, &[Method::GET])?;
    let path = state
        .images
        .blob_path(digest)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(format!(
                "blob sha256:{digest} not found"
            )))
        }
        Err(e) => return Err(ApiError::internal(format!("cannot open blob: {e}"))),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        loop {
            let mut buf = vec![0u8; 64 << 10];
            match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let mut response = warp::Reply::into_response(warp::reply::stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}
