//! pgcloak library
