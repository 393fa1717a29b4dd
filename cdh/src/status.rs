//! Building ttrpc response frames: a success carrying a message, or an error status.

use prost::Message;

use crate::frame::{Frame, TYPE_RESPONSE};
use crate::proto::{code, Response, Status};

/// The prefix CDH puts on every error message it answers (`[CDH] [ERROR]: {error}`,
/// guest-components `confidential-data-hub/hub/src/bin/ttrpc_server`).
pub const CDH_ERROR_PREFIX: &str = "[CDH] [ERROR]: ";

/// A response frame on `stream_id` with an error `code` and `message`.
pub fn status_frame(stream_id: u32, code: i32, message: String) -> Frame {
    let response = Response {
        status: Some(Status {
            code,
            message,
            details: Vec::new(),
        }),
        payload: Vec::new(),
    };
    Frame::new(stream_id, TYPE_RESPONSE, response.encode_to_vec())
}

/// A successful response frame on `stream_id` carrying the encoded `payload` (with an
/// explicit `OK` status, as Go's ttrpc server writes it).
pub fn ok_frame(stream_id: u32, payload: Vec<u8>) -> Frame {
    let response = Response {
        status: Some(Status {
            code: code::OK,
            message: String::new(),
            details: Vec::new(),
        }),
        payload,
    };
    Frame::new(stream_id, TYPE_RESPONSE, response.encode_to_vec())
}
