"""Getting HR originals: crawling booru APIs, ingesting folders, the filters both share."""
