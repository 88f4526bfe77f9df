from csp.middleware import CSPMiddleware as BaseCSPMiddleware


class CSPMiddleware(BaseCSPMiddleware):
    """django-csp's middleware, minus the policy on JSON answers.

    A Content-Security-Policy governs documents a browser renders; JSON is never one
    (SecurityMiddleware sends nosniff, so it cannot be taken for HTML). Building the policy
    cost the labelling API about a tenth of its CPU per request (bench/queue_bench.py). Pages,
    the API's Swagger docs and error pages keep the header.
    """

    def process_response(self, request, response):
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        return super().process_response(request, response)
