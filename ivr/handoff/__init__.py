"""Agent handoff: AMI events to the trail, screen-pop notifications between servers, queue waits."""
