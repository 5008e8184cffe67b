//! Tests of the task queue and the histogram.
