"""Pictures and pages for inspecting results (e.g. the ranked lists of a gallery search)."""
