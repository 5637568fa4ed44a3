"""Independent functional forwards of upstream models, written from ../shared/reference/*.md in the upstream layout;
the model tests compare our modules against them."""
