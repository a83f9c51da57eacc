"""The native exact renderer: diffusers components driven the way ai-toolkit drives them."""
