from django.db import models


class Order(models.Model):
    ref = models.CharField(max_length=32, unique=True)
    total_cents = models.IntegerField()
    declined = models.BooleanField(default=False)
    status = models.CharField(max_length=16, default="new")
