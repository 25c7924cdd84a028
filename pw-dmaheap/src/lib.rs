//! PipeWire buffer negotiator (work in progress: see issue 5).
