//! `pow serve`: the upload web page and HTTP torrent store (being built, issue #9).
