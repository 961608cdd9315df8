"""What the driver and the ranks write to disk for each other, without torch: files replaced
whole or not at all (safe_files.py), and each rank's heartbeat for the driver's watchdog
(heartbeat.py)."""
