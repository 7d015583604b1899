//! The one retry helper of the crate: an attempt repeated with a fixed
//! pause while it fails transiently, until a deadline.

use std::time::{Duration, Instant};

/// Calls `attempt` until it succeeds, fails with an error that
/// `transient` rejects, or `grace` has passed since the first call (then
/// the last error is returned); sleeps `pause` between attempts.
pub(crate) fn retry_for<T, E>(
    grace: Duration,
    pause: Duration,
    transient: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + grace;
    loop {
        match attempt() {
            Err(e) if transient(&e) && Instant::now() < deadline => std::thread::sleep(pause),
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_transient_errors_until_success_or_the_deadline() {
        let mut n = 0;
        let r: Result<u32, &str> = retry_for(
            Duration::from_secs(5),
            Duration::from_millis(1),
            |e| *e == "busy",
            || {
                n += 1;
                if n < 3 {
                    Err("busy")
                } else {
                    Ok(n)
                }
            },
        );
        assert_eq!(r, Ok(3));
        let mut calls = 0;
        let r: Result<(), &str> = retry_for(
            Duration::from_millis(20),
            Duration::from_millis(5),
            |e| *e == "busy",
            || {
                calls += 1;
                Err("busy")
            },
        );
        assert_eq!(r, Err("busy"));
        assert!(calls >= 2);
        let mut calls = 0;
        let r: Result<(), &str> = retry_for(
            Duration::from_secs(5),
            Duration::from_millis(1),
            |e| *e == "busy",
            || {
                calls += 1;
                Err("broken")
            },
        );
        assert_eq!((r, calls), (Err("broken"), 1));
    }
}
