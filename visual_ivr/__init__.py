"""Visual IVR: text a caller a link, continue the same flow on H5 pages, one tap to a person."""
