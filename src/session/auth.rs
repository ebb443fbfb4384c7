//! Registry credentials served to the daemon (owner: session-services helper; in progress).
