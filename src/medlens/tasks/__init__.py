"""Complete jobs built from the parts: data in, a validated and reported model out."""
