"""What runs write and readers read: typed records, headline figures, units and formatting, atomic io, exports,
trackers, arm configs."""
