//! Loading bake files: evaluation, merging, inheritance, errors.
