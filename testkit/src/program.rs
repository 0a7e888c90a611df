//! Programming an engine the way every test and runner does: allocate a leg, configure
//! its media, set a session's plan. The engine is reached through `call`, whatever the
//! caller has (the in-process handle, the Unix-socket client, a benchmark's
//! `EngineApi`), so this module needs no data plane.

use earshot_engine_api::{
    EngineError, IpFamily, LegInfo, MediaConfig, Request, Response, SessionPlan,
};

/// One request to an engine, answered.
pub type Call<'a> = &'a mut dyn FnMut(Request) -> Result<Response, EngineError>;

fn unexpected(what: &str, r: &Response) -> EngineError {
    EngineError::Internal(format!("{what} answered {r:?}"))
}

/// Allocates leg `leg_key` of `session` (rtcp-mux, any port) and configures it with
/// `media`.
pub fn add_leg(
    call: Call<'_>,
    session: &str,
    leg_key: &str,
    family: IpFamily,
    media: MediaConfig,
) -> Result<LegInfo, EngineError> {
    let info = match call(Request::AllocateLeg {
        session: session.into(),
        leg_key: leg_key.into(),
        family,
        requested_port: None,
        rtcp_mux: true,
        resume: None,
    })? {
        Response::Leg(info) => info,
        other => return Err(unexpected("AllocateLeg", &other)),
    };
    call(Request::ConfigureLeg {
        leg: info.leg,
        media,
    })?;
    Ok(info)
}

/// Replaces a session's plan; an answer other than `Done` is an error.
pub fn set_plan(call: Call<'_>, plan: SessionPlan) -> Result<(), EngineError> {
    match call(Request::SetSessionPlan(plan))? {
        Response::Done => Ok(()),
        other => Err(unexpected("SetSessionPlan", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{Supervision, pcmu_media};
    use earshot_engine_api::LegId;

    #[test]
    fn a_leg_is_allocated_then_configured_and_refusals_are_errors() {
        let mut seen = Vec::new();
        let mut engine = |r: Request| -> Result<Response, EngineError> {
            seen.push(format!("{r:?}"));
            Ok(match r {
                Request::AllocateLeg {
                    session, leg_key, ..
                } => Response::Leg(LegInfo {
                    leg: LegId(7),
                    session,
                    leg_key,
                    local: "127.0.0.1:2000".parse().unwrap(),
                    local_rtcp: "127.0.0.1:2000".parse().unwrap(),
                    media: None,
                    remote: None,
                }),
                _ => Response::Done,
            })
        };
        let info = add_leg(&mut engine, "s", "k", IpFamily::V4, pcmu_media(None)).unwrap();
        assert_eq!(info.leg, LegId(7));
        set_plan(
            &mut engine,
            Supervision::Call.plan("s", &[info.leg, info.leg], false),
        )
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen[0].starts_with("AllocateLeg") && seen[1].starts_with("ConfigureLeg"));
        let mut refusing = |_: Request| -> Result<Response, EngineError> {
            Err(EngineError::Unavailable("down".into()))
        };
        assert!(add_leg(&mut refusing, "s", "k", IpFamily::V4, pcmu_media(None)).is_err());
        let mut odd = |_: Request| -> Result<Response, EngineError> { Ok(Response::Done) };
        let err = add_leg(&mut odd, "s", "k", IpFamily::V4, pcmu_media(None)).unwrap_err();
        assert!(matches!(err, EngineError::Internal(_)), "{err:?}");
    }
}
