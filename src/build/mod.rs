//! One image: a BuildSpec becomes a Solve request plus the session it needs.
