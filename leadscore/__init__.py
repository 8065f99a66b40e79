"""leadscore: lead scoring, contact timing and churn risk for car dealers."""

__version__ = "0.1.0"
