"""What runs write and readers read: headline figures, atomic io, exports, trackers, arm configs."""
