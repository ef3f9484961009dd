//! Loaders (files → documents) and the splitter (documents → chunks).
