from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100, unique=True)
    born = models.DateField(null=True)


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=200, db_index=True)
    isbn = models.CharField(max_length=13)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    published = models.DateTimeField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["author", "title"], name="one_title_per_author")]
        indexes = [models.Index(fields=["isbn"], name="book_isbn")]
