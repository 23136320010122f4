//! The ranges a channel's HTTP/2 settings must lie in, checked by
//! [`build`](super::BalancedChannelBuilder::build) so that a value `h2`
//! would panic on or the server would reject is a clear error instead.
//!
//! | setting | allowed | source |
//! |---|---|---|
//! | `max_frame_size` | 16,384..=16,777,215 bytes | RFC 9113 §6.5.2 (SETTINGS_MAX_FRAME_SIZE) |
//! | `initial_stream_window_size` | 1..=2^31-1 bytes | RFC 9113 §6.5.2 (SETTINGS_INITIAL_WINDOW_SIZE), §6.9.1 |
//! | `initial_connection_window_size` | 65,535..=2^31-1 bytes | RFC 9113 §6.9.1, §6.9.2 |
//! | `max_header_list_size` | 102..=u32::MAX bytes | see [`MIN_HEADER_LIST_SIZE`] |

use std::ops::RangeInclusive;

use crate::transport::Http2Settings;
use crate::{Error, ErrorKind};

/// RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE.
pub(crate) const FRAME_SIZE: RangeInclusive<u32> = 16_384..=16_777_215;
/// RFC 9113 §6.9.1: a flow-control window never exceeds 2^31-1.
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// A stream window of 0 lets the server send no DATA at all: calls hang.
pub(crate) const STREAM_WINDOW: RangeInclusive<u32> = 1..=MAX_WINDOW;
/// RFC 9113 §6.9.2: the connection window starts at 65,535 and only
/// WINDOW_UPDATE changes it, so it cannot be made smaller.
pub(crate) const CONNECTION_WINDOW: RangeInclusive<u32> = 65_535..=MAX_WINDOW;
/// The smallest header list a gRPC response has, as RFC 9113 §6.5.2
/// counts it (name + value + 32 bytes per field): `:status: 200` (42)
/// and `content-type: application/grpc` (60). A smaller limit fails every
/// call (`h2` reports it as "excessive load generating behavior").
pub(crate) const MIN_HEADER_LIST_SIZE: u32 = (7 + 3 + 32) + (12 + 16 + 32);

/// Checks each setting against its range; the error names the setting,
/// the value and the range.
pub(crate) fn http2(settings: &Http2Settings) -> Result<(), Error> {
    check("max_frame_size", settings.max_frame_size, FRAME_SIZE)?;
    check(
        "initial_stream_window_size",
        settings.stream_window,
        STREAM_WINDOW,
    )?;
    check(
        "initial_connection_window_size",
        settings.connection_window,
        CONNECTION_WINDOW,
    )?;
    check(
        "max_header_list_size",
        settings.max_header_list_size,
        MIN_HEADER_LIST_SIZE..=u32::MAX,
    )
}

fn check(setting: &str, value: u32, range: RangeInclusive<u32>) -> Result<(), Error> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Config,
        format!(
            "{setting} {value} is out of range: allowed {}..={} bytes",
            range.start(),
            range.end()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Http2Settings)) -> Result<(), Error> {
        let mut settings = Http2Settings::default();
        f(&mut settings);
        http2(&settings)
    }

    #[test]
    fn the_defaults_pass() {
        assert!(http2(&Http2Settings::default()).is_ok());
    }

    #[test]
    fn a_frame_size_outside_rfc_9113_is_refused_with_its_name_value_and_range() {
        for bad in [0, 1, 16_383, 16_777_216, u32::MAX] {
            let error = with(|s| s.max_frame_size = bad).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Config);
            assert_eq!(
                error.to_string(),
                format!("max_frame_size {bad} is out of range: allowed 16384..=16777215 bytes")
            );
        }
        for good in [16_384, 16_777_215] {
            assert!(with(|s| s.max_frame_size = good).is_ok());
        }
    }

    #[test]
    fn windows_above_two_to_the_31_minus_one_are_refused() {
        let error = with(|s| s.stream_window = u32::MAX).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "initial_stream_window_size 4294967295 is out of range: allowed 1..=2147483647"
            ),
            "{error}"
        );
        assert!(with(|s| s.stream_window = 0).is_err());
        assert!(with(|s| s.stream_window = MAX_WINDOW).is_ok());
        let error = with(|s| s.connection_window = 1 << 31).unwrap_err();
        assert!(error.to_string().starts_with("initial_connection_window_size 2147483648 is out of range: allowed 65535..=2147483647"), "{error}");
        assert!(with(|s| s.connection_window = 1024).is_err());
        assert!(with(|s| s.connection_window = MAX_WINDOW).is_ok());
    }

    #[test]
    fn a_header_list_limit_no_grpc_response_fits_in_is_refused() {
        let error = with(|s| s.max_header_list_size = 0).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("max_header_list_size 0 is out of range: allowed 102..="),
            "{error}"
        );
        assert!(with(|s| s.max_header_list_size = 101).is_err());
        assert!(with(|s| s.max_header_list_size = 102).is_ok());
        assert!(with(|s| s.max_header_list_size = u32::MAX).is_ok());
    }
}
