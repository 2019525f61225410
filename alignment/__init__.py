"""Sub-pixel registration of DSLR images onto the phone's raw sensor grid."""
