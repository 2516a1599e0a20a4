"""Topics, versioned event contracts, codecs, the Faust app and the dead-letter topic."""
