"""Image and event (DVS) data sets, transforms and event-to-frame integration."""
