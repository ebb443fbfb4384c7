ROUTES = ["/", "/health"]
