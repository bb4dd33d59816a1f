"""What ships: the Helm chart, the images, the lock of their versions, the version everywhere."""
